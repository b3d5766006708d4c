"""A GGUF model's packed layers kept in lmpipe's cache: packed once, mapped at every later load.

Packing a GGUF's blocks for lmpipe's kernels (and checking each kernel on them) is most of a
load. So the first load writes the packed buffers, exactly as the kernels read them, into one
file of lmpipe's own, and later loads map that file instead of packing again.

The layout is lmpipe's own and documented, never a library's: `packed.bin` holds each layer's
buffers one after another, each at a multiple of ALIGN bytes (the kernels' aligned loads),
as lmpipe.models.kernels.vnni lays them out (int4_pack: blocks of 16 rows, each group's
nibbles then its 16 bfloat16 scales and zeros; int8_pack: [N/16, K/4, 16, 4] bytes, each
value plus 128, with float32 scales per row). `index.json` names, for each packed layer, its
mode, shape, buffers (offset, dtype, shape) and where it goes in the model (q/k/v and gate/up
fused as lmpipe.models.quantize.install fuses them). A model with any layer on torch's kernels
(whose packing is torch's private, CPU-specific layout) gets no such file.

The folder is named by what decides the packing: the GGUF file (lmpipe.models.derived.cache_key),
--quantize, the dtype and FORMAT, the layout's version; a changed layout bumps FORMAT and is
never misread. A load checks each layer's first 16 rows against the file's own values (the
dequantized packing must equal them, and the kernel's product on them agree) and rebuilds the
cache where one differs or the file is short.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from .derived import MARKER, cache_key, conversion_info

FORMAT = 1  # the layout of packed.bin and index.json; bump on any change to either or to vnni's packing
ALIGN = 64
SAMPLE_ROWS = 16  # one block of the kernels' layout: the rows each layer is checked on at load


def folder(gguf: Path, quantize: str | None, dtype: Any) -> Path:
    """The cache folder of `gguf` packed for --quantize `quantize` and `dtype`: named by the file's
    content fingerprint and its modification time (a file rewritten in place packs afresh), the
    settings and FORMAT."""
    import hashlib

    stamp = hashlib.sha256(f"{cache_key(gguf)}|{gguf.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    return paths.models_dir() / f"{gguf.stem}-{stamp}-packed-{quantize or 'file'}-{str(dtype).removeprefix('torch.')}-v{FORMAT}"


@dataclass
class Packed:
    """A cache folder's index and its mapped buffers."""

    index: dict[str, Any]
    data: Any  # numpy memmap of packed.bin (copy on write: pages are read from the file as touched)

    def tensor(self, entry: dict[str, Any]) -> Any:
        import numpy as np
        import torch

        dtype = getattr(torch, entry["dtype"])
        size = int(np.prod(entry["shape"])) * torch.empty(0, dtype=dtype).element_size()
        raw = torch.from_numpy(self.data[entry["offset"]:entry["offset"] + size])
        return raw.view(dtype).reshape(entry["shape"])


def open_packed(target: Path) -> Packed | None:
    """The cache at `target`, mapped; None where there is none, or it is of another FORMAT or short."""
    import numpy as np

    info = conversion_info(target)
    if info is None or info.get("format") != FORMAT:
        return None
    try:
        index = json.loads((target / "index.json").read_text())
        data = np.memmap(target / "packed.bin", dtype=np.uint8, mode="c")
    except (OSError, ValueError):
        return None
    if len(data) != index.get("bytes"):
        return None
    return Packed(index, data)


def save(model: Any, target: Path, info: dict[str, Any]) -> bool:
    """Write the packed layers of `model` (installed by lmpipe.models.quantize.install) to `target`,
    atomically; False (and nothing written) where a layer is not on lmpipe's kernels or writing fails."""
    from .quantize import quantized_embedding_class, quantized_linear_class, quantized_part_class

    QuantizedLinear, QuantizedPart = quantized_linear_class(), quantized_part_class()
    layers: dict[int, dict[str, Any]] = {}
    buffers: list[Any] = []
    placements = []
    embedding = None
    offset = 0
    for name, module in model.named_modules():
        if isinstance(module, QuantizedPart):
            placements.append({"name": name, "layer": _layer(module.fused, layers, buffers), "start": module.start,
                               "end": module.end})
        elif isinstance(module, QuantizedLinear) and not name.endswith(".fused"):
            placements.append({"name": name, "layer": _layer(module, layers, buffers)})
        elif isinstance(module, quantized_embedding_class()):
            embedding = name
    if not layers or any(layer is None for layer in layers.values()):
        return False
    entries = []
    for tensor in buffers:
        entries.append({"offset": offset, "dtype": str(tensor.dtype).removeprefix("torch."),
                        "shape": list(tensor.shape)})
        offset += -(-tensor.nbytes // ALIGN) * ALIGN
    index = {"layers": list(layers.values()), "placements": placements, "buffers": entries, "bytes": offset,
             "embedding": embedding}
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        with open(tmp / "packed.bin", "wb") as f:
            for tensor, entry in zip(buffers, entries, strict=True):
                f.seek(entry["offset"])
                f.write(tensor.contiguous().reshape(-1).view(_uint8()).numpy().tobytes())
            f.truncate(offset)
        (tmp / "index.json").write_text(json.dumps(index))
        (tmp / MARKER).write_text(json.dumps({**info, "format": FORMAT}, indent=2))
        if target.exists():
            shutil.rmtree(target)  # one of a different layout, or a damaged one
        tmp.rename(target)
        return True
    except OSError:
        return False  # a read-only cache, a full disk, a race: the model in memory is still good
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _uint8() -> Any:
    import torch

    return torch.uint8


def _layer(module: Any, layers: dict[int, dict[str, Any]], buffers: list[Any]) -> int:
    """The index of `module` in `layers` (added, its buffers appended, the first time it is seen)."""
    key = id(module)
    if key not in layers:
        if not module.vnni:
            layers[key] = None  # torch's packing: never written
            return -1
        first = len(buffers)
        buffers.append(module.packed)
        if module.packed_scales is not None:
            buffers.append(module.packed_scales)
        layers[key] = {"mode": module.mode, "in": module.in_features, "out": module.out_features,
                       "bfloat16_rows": module.bfloat16_rows, "buffers": list(range(first, len(buffers)))}
    return list(layers).index(key)


def install_packed(model: Any, packed: Packed, samples: dict[str, Any], biases: dict[str, Any]) -> bool:
    """Put the cached layers in place of the model's linears; False (the model untouched) where a
    layer's first rows differ from `samples` (their QuantizedWeight made from the file, by the
    name of the module whose first rows they are) or a layer is missing."""
    import torch

    from .kernels import choice
    from .quantize import EXACT_TOLERANCE, _require_close, product, quantized_embedding_class, \
        quantized_linear_class, quantized_part_class

    QuantizedLinear, QuantizedPart = quantized_linear_class(), quantized_part_class()
    index = packed.index
    firsts: dict[int, str] = {}
    for place in index["placements"]:
        if place.get("start", 0) == 0:
            firsts.setdefault(place["layer"], place["name"])
    layers = []
    for number, layer in enumerate(index["layers"]):
        tensors = [packed.tensor(index["buffers"][i]) for i in layer["buffers"]]
        scales = tensors[1] if len(tensors) > 1 else None
        sample = samples.get(firsts.get(number, ""))
        if sample is None:
            return False
        rows = min(SAMPLE_ROWS, layer["out"])
        if layer["mode"] == "int8":
            head = (tensors[0][:rows // 16], scales[:rows], rows)
        else:
            head = (tensors[0][:rows * (tensors[0].numel() // layer["out"])], None, rows)
        reference = sample.rows(slice(0, rows)).dequantized()
        if not torch.equal(choice.dequantized(layer["mode"], *head), reference):
            return False  # a damaged cache (or one of other values): pack again
        x = torch.randn(2, layer["in"], generator=torch.Generator().manual_seed(0))
        _require_close(sample, "lmpipe's", product(layer["mode"], x, head[0], head[1], rows), x @ reference.t(),
                       EXACT_TOLERANCE)
        layers.append((layer, tensors[0], scales))
    built = [QuantizedLinear.restored(layer["mode"], layer["in"], layer["out"], values, scales, layer["bfloat16_rows"])
             for layer, values, scales in layers]
    for place in index["placements"]:
        parent, _, leaf = place["name"].rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        layer = built[place["layer"]]
        if "start" in place:
            if layer.bias is None and place["start"] == 0:
                layer.bias = _fused_bias(index, place["layer"], biases)
            setattr(owner, leaf, QuantizedPart(layer, place["start"], place["end"]))
        else:
            layer.bias = biases.get(place["name"])
            setattr(owner, leaf, layer)
    if index.get("embedding"):
        head = model.get_output_embeddings()
        dtype = model.get_input_embeddings().weight.dtype
        model.set_input_embeddings(quantized_embedding_class()(head, dtype))
    return True


def _fused_bias(index: dict[str, Any], number: int, biases: dict[str, Any]) -> Any:
    """A fused layer's bias: its parts' biases side by side (zeros for a part without), or None."""
    import torch

    parts = [p for p in index["placements"] if p["layer"] == number]
    found = [biases.get(p["name"]) for p in parts]
    if all(b is None for b in found):
        return None
    return torch.nn.Parameter(torch.cat([b.detach() if b is not None else torch.zeros(p["end"] - p["start"])
                                         for b, p in zip(found, parts, strict=True)]), requires_grad=False)


def names(packed: Packed) -> list[str]:
    """The names of the model's linears the cache puts in place."""
    return [p["name"] for p in packed.index["placements"]]
