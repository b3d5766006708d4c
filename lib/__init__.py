"""lmpipe: local language and vision models as small Unix tools over JSON Lines."""

__version__ = "0.1.0"
