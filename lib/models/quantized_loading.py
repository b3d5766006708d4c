"""Load a model quantized, without holding its float32 weights: a quantized copy kept in lmpipe's cache.

Loading float32 and then quantizing makes the process's peak memory the float32 model's,
however small the result. So the first `--quantize` of a model builds it on the meta device
(no memory) and fills it from its safetensors files tensor by tensor, each Linear's weight
quantized as it arrives, then saves the quantized weights (atomically, with lmpipe's
conversion marker, so lm-cache-ls lists them and lm-cache-rm removes them) under
lmpipe.paths.models_dir(), keyed by the source files and the copy's format. The copy holds
the portable values (lmpipe.models.quantize.QuantizedWeight), never a kernel's packed buffers: a
cache shared by machines with different CPUs serves each of them, and every load packs
for the CPU that runs. A copy of another format is rebuilt, never misread. Later loads read that copy: a
quarter (int8) or an eighth (int4) of the bytes, and a peak to match, as llama.cpp's
quantized GGUF files give. What this cannot do exactly (checkpoint names that need
transformers' renaming, buffers it cannot rebuild) it reports as None, and the caller loads
the usual way and quantizes after.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import paths
from . import gguf
from .quantize import QuantizedWeight, layer_modes, module_name, quantizable, quantize_weight, tied_head

# The families whose quantized copy is written and read here (tested on Llama); others load and
# then quantize in memory.
COPIED_FAMILIES = ("llama",)

# The copy's layout: 1 held torch's packed int4 buffers (CPU-specific); 2 holds plain values;
# 3: int4 copies keep the output head int8, and hold a GGUF's own Q4_0/Q4_1 blocks (lmpipe.models.gguf_blocks);
# 4: a tied model's copy holds no float embedding (looked up from the int8 head: quantize.QuantizedEmbedding).
FORMAT = 4


def copy_key(folder: Path, mode: str, dtype: Any) -> str:
    """Names the quantized copy after the source files (path, size, time) and the format, so a
    changed model or an older layout gets a new one."""
    import hashlib

    h = hashlib.sha256(f"{Path(folder).resolve()}|{mode}|{dtype}|format {FORMAT}".encode())
    for f in sorted(Path(folder).glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"{Path(folder).resolve().name}-{mode}-{h.hexdigest()[:16]}"


def load_quantized(auto: Any, folder: Path, config: Any, mode: str, dtype: Any,
                   notify: Callable[[str], None] = lambda m: None) -> Any | None:
    """The model of `folder`, its linears quantized to `mode`, or None when only the usual way works."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if getattr(config, "model_type", None) not in COPIED_FAMILIES or not files:
        return None
    target = paths.models_dir() / copy_key(folder, mode, dtype)
    copy = target / "model.safetensors"
    info = gguf.conversion_info(target)
    if info is not None and info.get("format") == FORMAT and copy.exists():
        model = _read_copy(auto, config, dtype, copy)
        if model is not None:
            return finish(model, folder)
    notify(f"quantizing {Path(folder).name} to {mode} (once; later loads read the quantized copy)")
    model = _skeleton(auto, config, dtype)
    modes = layer_modes(model, [name for name, m in model.named_modules() if _is_linear(m)], mode)
    linears = {name: m for name, m in model.named_modules() if name in modes and quantizable(m, modes[name])}
    blocks = _gguf_blocks(folder, model) if mode == "int4" else {}
    taken: set[str] = set()
    try:
        weights = _fill(model, files, linears, config, modes, dtype, blocks, taken)
    except ValueError:
        return None
    if weights is None:
        return None
    info = {"source": str(Path(folder).resolve()), "quantize": mode, "dtype": str(dtype), "format": FORMAT}
    if blocks:
        info["gguf_blocks"] = len(taken)  # layers running the file's own blocks
    _save(model, weights, target, info)
    from .quantized_layers import install  # torch: not at the top, which torch-free tools import

    install(model, weights, biases(model, weights))  # consumes `weights`
    return finish(model, folder)


def _is_linear(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear)


def _skeleton(auto: Any, config: Any, dtype: Any) -> Any:
    """The model on the meta device: no memory until each tensor is filled."""
    import torch

    with torch.device("meta"):
        return auto.from_config(config, dtype=dtype)


def _read_copy(auto: Any, config: Any, dtype: Any, copy: Path) -> Any | None:
    """The model filled from a quantized copy: its tensors assigned, its quantized linears packed here."""
    from safetensors import safe_open

    model = _skeleton(auto, config, dtype)
    with safe_open(str(copy), "pt") as f:
        keys = list(f.keys())
    quantized: dict[str, dict[str, Any]] = {}
    for key in keys:
        # One mapping per tensor: a quantized one is packed into fresh memory and its mapping
        # dropped with it; one mapping for the file would keep every page it touched.
        with safe_open(str(copy), "pt") as f:
            tensor = f.get_tensor(key)
        owner, _, leaf = key.rpartition(".")
        if leaf in ("qvalues", "qscales", "qzeros"):
            # Left in its mapping: packing (lmpipe.models.quantize.pack, or the join before it)
            # makes the kernel's memory, and the mapping goes with the portable value once that is
            # done. A copy here as well held both at once: a second quantized model at the peak.
            quantized.setdefault(owner, {})[key] = tensor
        elif not assign(model, key, tensor):
            return None
        del tensor
    weights = {name: QuantizedWeight.from_tensors(tensors, name) for name, tensors in quantized.items()}
    del quantized
    try:
        from .quantized_layers import install  # torch: not at the top, which torch-free tools import

        install(model, weights, biases(model, weights))
    except (AttributeError, KeyError):
        return None  # a copy that does not fit this model's layers: make it again
    return model


def biases(model: Any, weights: dict[str, QuantizedWeight]) -> dict[str, Any]:
    """The biases of the linears named in `weights` (loaded already: ValueError for one still on the meta device)."""
    found = {}
    for name in weights:
        bias = getattr(model.get_submodule(name), "bias", None)
        if bias is not None and bias.is_meta:
            raise ValueError(f"{name} has no bias in the files")
        found[name] = bias
    return found


def _save(model: Any, weights: dict[str, QuantizedWeight], target: Path, info: dict[str, Any]) -> None:
    """Write the copy into a temporary folder, marker last, then rename it into place (atomic)."""
    import json
    import shutil
    import tempfile

    from safetensors.torch import save_file

    tensors = {k: v for k, v in model.state_dict().items() if not v.is_meta}  # the linears' weights are not loaded
    if tied_head(model, weights) is not None:  # install looks the embedding up from the head's values
        tensors.pop(f"{module_name(model, model.get_input_embeddings())}.weight", None)
    for name, weight in weights.items():
        tensors.update(weight.tensors(name))
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"))
        (tmp / gguf.MARKER).write_text(json.dumps(info, indent=2))
        if target.exists():
            shutil.rmtree(target)  # an unfinished copy, or one of another format
        tmp.rename(target)
    except OSError:
        pass  # no copy this time (a read-only cache, a full disk, a race): the model in memory is still good
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def finish(model: Any, folder: Path | None) -> Any | None:
    """The filled model in eval mode, its computed buffers built; None if a tensor is still on the meta device."""
    from transformers import GenerationConfig

    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is not None:  # its inverse frequencies are computed, not stored: build them for real
        model.model.rotary_emb = type(rotary)(config=model.config)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    if folder is not None and (Path(folder) / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()


def _gguf_blocks(folder: Path, model: Any) -> dict[str, Any]:
    """The 4-bit blocks of the GGUF `folder` was converted from, by module name; none for other folders."""
    from .gguf_blocks import int4_blocks

    source = (gguf.conversion_info(Path(folder)) or {}).get("source", "")
    if not source.endswith(".gguf") or not Path(source).is_file():
        return {}
    try:
        return int4_blocks(Path(source), model)
    except Exception:  # transformers' GGUF reader is not a public API: whatever it does, quantizing the floats is right
        return {}


def _fill(model: Any, files: list[Path], linears: dict[str, Any], config: Any, modes: dict[str, str],
          dtype: Any, blocks: dict[str, Any], taken: set[str]) -> dict[str, QuantizedWeight] | None:
    """Assign every tensor of the files to `model`, quantizing each linear's weight to its mode in
    `modes` as it arrives (its float weight is never kept); the quantized weights by module name, or None.

    A weight in `blocks` (a GGUF's own 4-bit blocks) is taken as it is, and its name added to
    `taken`, where it dequantizes to exactly the float tensor of the files."""
    import torch
    from safetensors import safe_open

    weights: dict[str, QuantizedWeight] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                owner, _, leaf = key.rpartition(".")
                if owner in linears and leaf == "weight":
                    tensor = f.get_tensor(key).to(dtype)
                    block = blocks.get(owner)
                    if block is not None and modes[owner] == "int4" and torch.equal(block.dequantized(), tensor):
                        weights[owner] = block.weight()
                        taken.add(owner)
                    else:
                        weights[owner] = quantize_weight(tensor, modes[owner])
                    continue
                if not assign(model, key, f.get_tensor(key).to(dtype)):
                    return None
    if getattr(config, "tie_word_embeddings", False) and "lm_head" in linears and "lm_head" not in weights:
        weights["lm_head"] = quantize_weight(model.get_input_embeddings().weight, modes["lm_head"])
    if set(linears) - set(weights):
        return None  # a weight the files do not hold
    return weights


def assign(model: Any, key: str, tensor: Any) -> bool:
    """Put `tensor` in place of the parameter or buffer `key` of `model`; False if it has none of that name."""
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
