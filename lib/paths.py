"""Where lmpipe keeps its files: the one place that knows these folders."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """lmpipe's own folder: $LMPIPE_HOME, else $XDG_CACHE_HOME/lmpipe, else ~/.cache/lmpipe."""
    if env := os.environ.get("LMPIPE_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lmpipe"


def models_dir() -> Path:
    """Models lmpipe made itself: GGUF files converted to safetensors, quantized copies."""
    return home() / "models"


def kernels_dir() -> Path:
    """lmpipe's own compiled kernels (lmpipe.models.kernels), built on first use, one folder per source
    and torch version."""
    return home() / "kernels"


def synthetic_dir() -> Path:
    """Random-weight GGUF files of real models' shapes (lm-bench --synthetic, lmpipe.models.synthetic)."""
    return home() / "synthetic"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub computes it (HF_HOME, HF_HUB_CACHE)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def chat_history_file() -> Path:
    """lm-chat's line history (readline's file), kept between sessions."""
    return home() / "chat_history"


def servers_dir() -> Path:
    """Running lm-serve instances, one file each (lmpipe.backends.warm)."""
    return home() / "servers"
