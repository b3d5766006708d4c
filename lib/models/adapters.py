"""LoRA adapters in PEFT's format (adapter_config.json, adapter_model.safetensors), read and
merged by the `peft` library into the base model's weights once, at load.

A merged model is an ordinary model: the fast path, the quantized layers (quantized after the
merge) and every front door run it unchanged. Several adapters merge one after the other; each
adds its own low-rank update, times its scale (PEFT's `set_scale`: lora_alpha / r times SCALE).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class Adapter:
    path: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "Adapter":
        """--adapter PATH[:SCALE] (a path that itself ends in `:NUMBER` needs the scale written)."""
        path, sep, scale = text.rpartition(":")
        if sep:
            try:
                return cls(path, float(scale)).checked()
            except ValueError:
                pass
        return cls(text).checked()

    def checked(self) -> "Adapter":
        folder = Path(self.path)
        if not (folder / CONFIG).is_file():
            raise UsageError(f"--adapter {self.path}: no {CONFIG} there (a PEFT adapter folder)")
        if not any((folder / name).is_file() for name in WEIGHTS):
            raise UsageError(f"--adapter {self.path}: no {WEIGHTS[0]} there (a PEFT adapter folder)")
        return self

    def identity(self) -> dict[str, Any]:
        """The manifest's: where, how strongly, and the weights' sha256."""
        weights = next(Path(self.path) / name for name in WEIGHTS if (Path(self.path) / name).is_file())
        digest = hashlib.sha256()
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return {"path": str(Path(self.path).resolve()), "scale": self.scale, "sha256": digest.hexdigest()}


def merge(model: Any, adapters: tuple[Adapter, ...]) -> Any:
    """`model` with each adapter's update merged into its weights (float, before any quantization)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    for adapter in adapters:
        try:
            wrapped = PeftModel.from_pretrained(model, adapter.path, adapter_name="lmpipe")
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--adapter {adapter.path}: does not fit this model: {line}") from None
        if adapter.scale != 1.0:
            for module in wrapped.modules():
                if isinstance(module, LoraLayer):
                    module.set_scale("lmpipe", adapter.scale)
        model = wrapped.merge_and_unload()
    return model
