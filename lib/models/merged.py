"""A model with LoRA adapters merged into its weights, written once (lm-pull --merge).

peft's merge_and_unload adds each adapter's update to the weights (lmpipe.models.adapters.merge),
and transformers' save_pretrained writes the result as safetensors beside the tokenizer, so `-m
FOLDER` then runs it as any model, with no adapter to stack at load. The folder also holds
lmpipe-merge.json: the base model and each adapter (path, scale, sha256) it was made of.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError, first_line
from .adapters import Adapter, merge
from .loading import LOAD_LOCK, files_folder, identity
from .resolve import resolve

RECORD = "lmpipe-merge.json"


@dataclass(frozen=True)
class MergeSettings:
    model: str  # anything --model takes
    adapters: tuple[Adapter, ...]
    folder: Path  # written: it must not exist, or be empty

    def __post_init__(self) -> None:
        if not self.adapters:
            raise UsageError("--merge needs at least one --adapter")
        if self.folder.exists() and (not self.folder.is_dir() or any(self.folder.iterdir())):
            raise UsageError(f"--merge {self.folder}: already there and not an empty folder")


def write_merged(settings: MergeSettings, notify: Callable[[str], None]) -> dict[str, Any]:
    """Load the base model in float32, merge the adapters, write the folder; its record."""
    ref = resolve(settings.model)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = files_folder(ref, notify)
    try:
        with LOAD_LOCK:
            config = AutoConfig.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"cannot load {ref.name}: {first_line(exc)}") from None
    notify(f"merging {len(settings.adapters)} adapter(s) into {ref.name}")
    model = merge(model, settings.adapters)
    # Merged in float32, written in the checkpoint's own precision (a bfloat16 model stays half the size).
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, torch.dtype) and dtype != torch.float32:
        model = model.to(dtype)
    settings.folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(settings.folder, safe_serialization=True)
    tokenizer.save_pretrained(settings.folder)
    made = {"base": identity(ref, folder), "adapters": [a.identity() for a in settings.adapters]}
    (settings.folder / RECORD).write_text(json.dumps(made, indent=2) + "\n")
    files = [p for p in settings.folder.rglob("*") if p.is_file()]
    return {"id": ref.id, "path": str(settings.folder.resolve()), "adapters": made["adapters"], "files": len(files),
            "size_bytes": sum(p.stat().st_size for p in files)}
