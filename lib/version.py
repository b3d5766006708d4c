"""lmpipe's version, in one place: every manifest records it, and so does each converted model."""

__version__ = "0.1.0"
