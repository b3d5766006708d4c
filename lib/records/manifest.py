"""What a record needs to be reproduced: the model's identity, the settings, the versions."""

from __future__ import annotations

from functools import cache
from typing import Any

from ..version import __version__


@cache
def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"lmpipe": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def manifest(identity: dict[str, Any], settings: dict[str, Any], device: str, dtype: str) -> dict[str, Any]:
    return {**identity, **settings, "device": device, "dtype": dtype, "versions": versions()}
