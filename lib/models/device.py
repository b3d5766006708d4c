"""Device, precision and attention choices, checked against what this torch can do."""

from __future__ import annotations

import importlib.util

from ..errors import UsageError

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2")


def cpuinfo(field: str) -> str | None:
    """The first value of `field` in Linux's /proc/cpuinfo ("model name", "flags"); None elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.split(":", 1)[0].strip() == field),
                        None)
    except OSError:
        return None


def choose_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device cuda: CUDA is not available to this torch ({torch.__version__})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Apple's Metal backend is not available here")
    if name not in DEVICES:
        raise UsageError(f"--device {name}: choose one of {', '.join(DEVICES)}")
    return name


def choose_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device == "mps":
            return torch.float16
        return torch.float32  # CPU: float32 is both the fastest and the exact reference
    if name not in DTYPES:
        raise UsageError(f"--dtype {name}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def check_attention(name: str | None, device: str) -> str | None:
    if name is None:
        return None
    if name not in ATTENTIONS:
        raise UsageError(f"--attention {name}: choose one of {', '.join(ATTENTIONS)}")
    if name == "flash_attention_2":
        if device != "cuda":
            raise UsageError("--attention flash_attention_2 needs --device cuda")
        if importlib.util.find_spec("flash_attn") is None:
            raise UsageError("--attention flash_attention_2 needs the flash-attn package")
    return name
