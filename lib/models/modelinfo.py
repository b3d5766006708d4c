"""What a model is, from its config and tokenizer alone (fast), or loaded for exact figures.

Without loading, the parameter count comes from the safetensors headers (shapes only, no
weights read); with `load=True` it is counted on the loaded model, tied weights once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ModelNotFound
from . import gguf
from .loading import ModelSettings, files_folder, load, load_tokenizer
from .resolve import ModelRef, resolve


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (following the hub cache's symlinks)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def safetensors_parameters(folder: Path) -> int | None:
    """The parameter count written in the safetensors headers; None when the folder has none."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="numpy") as f:
            for name in f.keys():
                count = 1
                for dim in f.get_slice(name).get_shape():
                    count *= dim
                total += count
    return total


def _config(ref: ModelRef, loaded_folder: Path | None):
    """The model's config, without converting a GGUF that is not converted yet."""
    from transformers import AutoConfig

    if loaded_folder is not None:
        return AutoConfig.from_pretrained(loaded_folder), loaded_folder
    if ref.kind in ("embedded", "gguf"):
        folder = gguf.finished_folder(ref.path)
        if folder is not None:
            return AutoConfig.from_pretrained(folder), folder
        return AutoConfig.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name), None
    return AutoConfig.from_pretrained(ref.path), ref.path


def _dtype_name(value: Any) -> str | None:
    return None if value is None else str(value).removeprefix("torch.")


def special_tokens(tokenizer: Any) -> dict[str, str]:
    out = {}
    for role in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
        token = getattr(tokenizer, role, None)
        if token:
            out[role.removesuffix("_token")] = str(token)
    return out


def model_info(name: str | None, load_weights: bool = False, device: str = "auto",
               dtype: str = "auto") -> dict[str, Any]:
    ref = resolve(name)
    loaded = None
    folder: Path | None = None
    if load_weights:
        loaded = load(ModelSettings(name, device, dtype))
        folder = gguf.finished_folder(loaded.ref.path) if loaded.ref.kind == "gguf" else files_folder(loaded.ref)
    try:
        config, folder = _config(ref, folder)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot read the config of {ref.name}: {str(exc).strip().splitlines()[0]}") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    tokenizer = loaded.tokenizer if loaded is not None else load_tokenizer(ref)
    heads = getattr(text, "num_attention_heads", None)
    if loaded is not None:
        parameters: int | None = sum(p.numel() for p in loaded.model.parameters())
        counted: str | None = "loaded"
    else:
        parameters = safetensors_parameters(folder) if folder is not None else None
        counted = "safetensors" if parameters is not None else None
    record: dict[str, Any] = {
        "id": ref.id,
        "kind": ref.kind,
        "path": str(ref.path),
        "architecture": (getattr(config, "architectures", None) or [None])[0],
        "model_type": getattr(config, "model_type", None),
        "parameters": parameters,
        "parameters_from": counted,
        "vocab_size": getattr(text, "vocab_size", None),
        "layers": getattr(text, "num_hidden_layers", None),
        "heads": heads,
        "kv_heads": getattr(text, "num_key_value_heads", None) or heads,
        "hidden_size": getattr(text, "hidden_size", None),
        "intermediate_size": getattr(text, "intermediate_size", None),
        "context_length": getattr(text, "max_position_embeddings", None),
        "dtype": loaded.dtype if loaded is not None else _dtype_name(getattr(config, "dtype", None)),
        "tie_word_embeddings": getattr(text, "tie_word_embeddings", None),
        "encoder_decoder": bool(getattr(config, "is_encoder_decoder", False)),
        "special_tokens": special_tokens(tokenizer),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "size_bytes": size_on_disk(ref.path),
    }
    if ref.revision:
        record["revision"] = ref.revision
    if ref.kind in ("embedded", "gguf") and folder is not None:
        record["converted_path"] = str(folder)
        record["converted_size_bytes"] = size_on_disk(folder)
    return record
