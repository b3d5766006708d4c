"""Load a model quantized, without holding its float32 weights: a quantized copy kept in lmpipe's cache.

Loading float32 and then quantizing makes the process's peak memory the float32 model's,
however small the result. So the first `--quantize` of a model builds it on the meta device
(no memory) and fills it from its safetensors files tensor by tensor, each Linear's weight
quantized as it arrives, then saves the quantized weights (atomically, with lmpipe's
conversion marker, so lm-cache-ls lists them and lm-cache-rm removes them) under
lmpipe.paths.models_dir(), keyed by the source files. Later loads read that copy: a
quarter (int8) or an eighth (int4) of the bytes, and a peak to match, as llama.cpp's
quantized GGUF files give. What this cannot do exactly (checkpoint names that need
transformers' renaming, buffers it cannot rebuild) it reports as None, and the caller loads
the usual way and quantizes after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .. import paths
from . import gguf
from .fastpath import FAMILIES
from .quantize import quantizable, quantized_linear_class


def copy_key(folder: Path, mode: str, dtype: Any) -> str:
    """Names the quantized copy after the source files (path, size, time), so a changed model gets a new one."""
    import hashlib

    h = hashlib.sha256(f"{Path(folder).resolve()}|{mode}|{dtype}".encode())
    for f in sorted(Path(folder).glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"{Path(folder).resolve().name}-{mode}-{h.hexdigest()[:16]}"


def load_quantized(auto: Any, folder: Path, config: Any, mode: str, dtype: Any,
                   notify: Callable[[str], None] = lambda m: None) -> Any | None:
    """The model of `folder`, its linears quantized to `mode`, or None when only the usual way works."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if getattr(config, "model_type", None) not in FAMILIES or not files:
        return None
    target = paths.models_dir() / copy_key(folder, mode, dtype)
    copy = target / "model.safetensors"
    if gguf.conversion_info(target) is not None and copy.exists():
        model = _skeleton(auto, config, dtype, mode, copy)
        if model is not None:
            return _finish(model, folder)
    notify(f"quantizing {Path(folder).name} to {mode} (once; later loads read the quantized copy)")
    model = _skeleton(auto, config, dtype, None, None)
    linears = {name: m for name, m in model.named_modules() if _is_linear(m) and quantizable(m, mode)}
    try:
        model = _fill(model, files, linears, config, mode, dtype)
    except ValueError:
        return None
    if model is not None:
        _save(model, target, {"source": str(Path(folder).resolve()), "quantize": mode, "dtype": str(dtype)})
        model = _finish(model, folder)
    return model


def _is_linear(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear)


def _skeleton(auto: Any, config: Any, dtype: Any, mode: str | None, copy: Path | None) -> Any | None:
    """The model on the meta device; with `copy`, its linears as quantized shells filled from it."""
    import torch
    from safetensors import safe_open

    with torch.device("meta"):
        model = auto.from_config(config, dtype=dtype)
    if copy is None:
        return model
    with safe_open(str(copy), "pt") as f:
        keys = list(f.keys())
    for name in [k.removesuffix(".qweight") for k in keys if k.endswith(".qweight")]:
        linear = model.get_submodule(name)
        shell = quantized_linear_class()(linear, mode, (None, None))
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, shell)
    for key in keys:
        # One mapping per tensor: a tensor the fast path replaces (fused projections) takes its
        # mapping, and the pages it touched, with it; one mapping for the file would keep them.
        with safe_open(str(copy), "pt") as f:
            tensor = f.get_tensor(key)
        if not _assign(model, key, tensor):
            return None
    return model


def _save(model: Any, target: Path, info: dict[str, Any]) -> None:
    """Write the copy into a temporary folder, marker last, then rename it into place (atomic)."""
    import json
    import shutil
    import tempfile

    from safetensors.torch import save_file

    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / gguf.MARKER).write_text(json.dumps(info, indent=2))
        if target.exists():
            shutil.rmtree(target)  # an unfinished copy (a finished one would have been read)
        tmp.rename(target)
    except OSError:
        pass  # no copy this time (a read-only cache, a full disk, a race): the model in memory is still good
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _finish(model: Any, folder: Path) -> Any | None:
    from transformers import GenerationConfig

    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is not None:  # its inverse frequencies are computed, not stored: build them for real
        model.model.rotary_emb = type(rotary)(config=model.config)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    if (Path(folder) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()


def _fill(model: Any, files: list[Path], linears: dict[str, Any], config: Any, mode: str, dtype: Any):
    from safetensors import safe_open

    pending: dict[str, Any] = {}  # linear name -> its float weight, until its bias (if any) is read
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                owner, _, leaf = key.rpartition(".")
                if owner in linears and leaf == "weight":
                    pending[owner] = f.get_tensor(key).to(dtype)
                    if linears[owner].bias is None:
                        _quantize_into(model, owner, linears.pop(owner), pending.pop(owner), mode)
                    continue
                if not _assign(model, key, f.get_tensor(key).to(dtype)):
                    return None
    if getattr(config, "tie_word_embeddings", False) and "lm_head" in linears:
        _quantize_into(model, "lm_head", linears.pop("lm_head"), model.get_input_embeddings().weight, mode)
    for name in list(pending):
        _quantize_into(model, name, linears.pop(name), pending.pop(name), mode)
    if linears:
        return None  # a weight the files do not hold
    return model


def _assign(model: Any, key: str, tensor: Any) -> bool:
    import torch

    owner, _, leaf = key.rpartition(".")
    try:
        module = model.get_submodule(owner)
    except AttributeError:
        return False
    if leaf in module._parameters:
        module._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
    elif leaf in module._buffers:
        module._buffers[leaf] = tensor
    else:
        return False
    return True


def _quantize_into(model: Any, name: str, linear: Any, weight: Any, mode: str) -> None:
    import torch

    if linear.bias is not None and linear.bias.is_meta:
        raise ValueError(f"{name} has no bias in the files")
    shell = torch.nn.Linear(linear.in_features, linear.out_features, bias=False, device="meta")
    shell.weight = torch.nn.Parameter(weight, requires_grad=False)
    quantized = quantized_linear_class()(shell, mode)
    quantized.bias = linear.bias
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, quantized)
