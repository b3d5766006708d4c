"""A GGUF model's packed layers kept in lmpipe's cache: packed once, mapped at every later load.

Packing a GGUF's blocks for lmpipe's kernels (and checking each kernel on them) is most of a
load. So the first load writes the packed buffers, exactly as the kernels read them, into one
file of lmpipe's own, and later loads map that file instead of packing again.

The layout is lmpipe's own and documented, never a library's: `packed.bin` holds each layer's
buffers one after another, each at a multiple of ALIGN bytes (the kernels' aligned loads),
as lmpipe.models.kernels.vnni lays them out (int4_pack: blocks of 16 rows, each group's
nibbles then its 16 bfloat16 scales and zeros; q4k_pack: blocks of 16 rows and 256 columns,
8 groups' nibbles, the rows' float16 d and dmin, each group's 6-bit scales and minimums as
bytes; q4_0_pack: int4's blocks with the rows' float16 d in place of scales and zeros;
int8_pack: [N/16, K/4, 16, 4] bytes, each
value plus 128, with float32 scales per row), then the layers' biases and every other tensor
of the model (norms, float layers). `index.json` names, for each packed layer, its mode,
shape, buffers (offset, dtype, shape), its first block's checksum and where it goes in the
model (q/k/v and gate/up fused as lmpipe.models.quantized_layers.install fuses them), and the
manifest's counts per GGUF type. A model with any layer on torch's kernels (whose packing is
torch's private, CPU-specific layout) gets no such file.

The folder is named by what decides the packing: the GGUF file (its content fingerprint,
lmpipe.models.derived.cache_key, and its modification time), --quantize, the dtype and
FORMAT, the layout's version; a changed layout bumps FORMAT and is never misread. A mapped
load never opens the GGUF. It checks each layer's first block of 16 rows: its bytes against
the checksum, and the kernel's product on it against its dequantized values (the load-time
kernel check, on a sample of rows); a cache that fails, or is short, is packed again from the
file. Damage past a layer's first block is not looked for: that would read every page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from .derived import MARKER, cache_key, conversion_info, written_whole

FORMAT = 4  # the layout of packed.bin and index.json; bump on any change to either or to vnni's packing (4: q4_0)
ALIGN = 64
SAMPLE_ROWS = 16  # one block of the kernels' layout: the rows each layer is checked on at load


def folder(gguf: Path, quantize: str | None, dtype: Any) -> Path:
    """The cache folder of `gguf` packed for --quantize `quantize` and `dtype`: named by the file's
    content fingerprint and its modification time (a file rewritten in place packs afresh), the
    settings and FORMAT."""
    import hashlib

    stamp = hashlib.sha256(f"{cache_key(gguf)}|{gguf.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    dtype_name = str(dtype).removeprefix("torch.")
    return paths.models_dir() / f"{gguf.stem}-{stamp}-packed-{quantize or 'file'}-{dtype_name}-v{FORMAT}"


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


def save(model: Any, target: Path, info: dict[str, Any], ran: dict[str, dict[str, int]]) -> bool:
    """Write `model`'s packed layers (installed by lmpipe.models.quantized_layers.install), their biases and
    every other tensor it holds (norms, float layers) to `target`, atomically, with `ran` (the
    manifest's counts per GGUF type); False (and nothing written) where a layer is not on
    lmpipe's kernels or writing fails."""
    from .quantized_layers import PortableEmbedding, QuantizedEmbedding, QuantizedLinear, QuantizedPart

    layers: dict[int, tuple[int, dict[str, Any] | None]] = {}  # id(module) -> (its index, its entry)
    buffers: list[Any] = []
    placements = []
    embedding = portable = None
    for name, module in model.named_modules():
        if isinstance(module, QuantizedPart):
            placements.append({"name": name, "layer": _layer_index(module.fused, layers, buffers),
                               "start": module.start, "end": module.end})
        elif isinstance(module, QuantizedLinear) and not name.endswith(".fused"):
            placements.append({"name": name, "layer": _layer_index(module, layers, buffers)})
        elif isinstance(module, QuantizedEmbedding):
            embedding = name
        elif isinstance(module, PortableEmbedding):
            portable = name  # its buffers (QuantizedWeight.tensors' names) are saved with the floats
    if not layers or any(layer is None for _, layer in layers.values()):
        return False
    quantized = tuple(f"{p['name']}." for p in placements)
    floats = {}
    for key, tensor in model.state_dict().items():
        if not key.startswith(quantized):
            floats[key] = len(buffers)
            buffers.append(tensor)
    entries: list[dict[str, Any]] = []
    offset = 0
    for tensor in buffers:
        entries.append({"offset": offset, "dtype": str(tensor.dtype).removeprefix("torch."),
                        "shape": list(tensor.shape)})
        offset += -(-tensor.nbytes // ALIGN) * ALIGN
    index = {"layers": [layer for _, layer in layers.values()], "placements": placements, "floats": floats,
             "buffers": entries, "bytes": offset, "embedding": embedding, "portable_embedding": portable, "ran": ran}
    try:
        with written_whole(target, replace=True) as tmp:  # replaces one of a different layout, or a damaged one
            with open(tmp / "packed.bin", "wb") as f:
                for tensor, entry in zip(buffers, entries, strict=True):
                    f.seek(entry["offset"])
                    f.write(_raw(tensor))
                f.truncate(offset)
            (tmp / "index.json").write_text(json.dumps(index))
            (tmp / MARKER).write_text(json.dumps({**info, "format": FORMAT}, indent=2))
        return True
    except OSError:
        return False  # a read-only cache, a full disk, a race: the model in memory is still good


def _raw(tensor: Any) -> Any:
    """`tensor`'s bytes as a numpy view (written as it is: no copy of a layer's hundreds of MB)."""
    import torch

    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def _bytes(tensor: Any) -> bytes:
    return _raw(tensor).tobytes()


def _first_block(layer: dict[str, Any], values: Any, scales: Any) -> tuple[Any, Any, int]:
    """The packing of a layer's first SAMPLE_ROWS rows (one block of the kernels' layout)."""
    rows = min(SAMPLE_ROWS, layer["out"])
    if layer["mode"] == "int8":  # [N/16, K/4, 16, 4], per-row scales
        return values[:1], scales[:rows], rows
    return values[:rows * (values.numel() // layer["out"])], None, rows


def _checksum(block: tuple[Any, Any, int]) -> int:
    import zlib

    values, scales, _ = block
    return zlib.crc32(_bytes(values) + (b"" if scales is None else _bytes(scales)))


def _layer_index(module: Any, layers: dict[int, tuple[int, dict[str, Any] | None]], buffers: list[Any]) -> int:
    """The index of `module` in `layers` (added, its buffers appended, the first time it is seen)."""
    key = id(module)
    if key not in layers:
        if not module.vnni:
            layers[key] = (-1, None)  # torch's packing: never written
            return -1
        first = len(buffers)
        buffers.append(module.packed)
        if module.packed_scales is not None:
            buffers.append(module.packed_scales)
        layer = {"mode": module.mode, "in": module.in_features, "out": module.out_features,
                 "bfloat16_rows": module.bfloat16_rows, "buffers": list(range(first, len(buffers)))}
        layer["checksum"] = _checksum(_first_block(layer, module.packed, module.packed_scales))
        if module.bias is not None:
            layer["bias"] = len(buffers)
            buffers.append(module.bias)
        layers[key] = (len(layers), layer)
    return layers[key][0]


def load_mapped(auto: Any, config: Any, dtype: Any, attention: str | None, packed: Packed) -> Any | None:
    """The model of a packed cache, without its GGUF: floats assigned from the mapping, packed layers
    put in place, each checked on its first rows (their bytes' checksum, and the kernel's product
    against their dequantized values); None where a check fails or a tensor does not fit."""
    import torch

    from .kernels import choice
    from .quantize import EXACT_TOLERANCE, INT4_MODES, QuantizedWeight, _require_close, product
    from .quantized_layers import PortableEmbedding, QuantizedEmbedding, QuantizedLinear, QuantizedPart
    from .quantized_loading import assign

    index = packed.index
    kwargs = {"attn_implementation": attention} if attention else {}
    with torch.device("meta"):
        model = auto.from_config(config, dtype=dtype, **kwargs)
    built = []
    for layer in index["layers"]:
        tensors = [packed.tensor(index["buffers"][i]) for i in layer["buffers"]]
        values, scales = tensors[0], tensors[1] if len(tensors) > 1 else None
        block = _first_block(layer, values, scales)
        if _checksum(block) != layer["checksum"]:
            return None  # a damaged cache: pack again
        reference = choice.dequantized(layer["mode"], *block)
        x = torch.randn(2, layer["in"], generator=torch.Generator().manual_seed(0))
        # The kernel reads this CPU's way what the layout says (lmpipe.models.quantize.check_kernel's check).
        shape = (layer["out"], layer["in"] // (2 if layer["mode"] in INT4_MODES else 1))  # for its message
        _require_close(QuantizedWeight(layer["mode"], torch.empty(shape, device="meta"), None), "lmpipe's",
                       product(layer["mode"], x, block[0], block[1], block[2]), x @ reference.t(), EXACT_TOLERANCE)
        module = QuantizedLinear.restored(layer["mode"], layer["in"], layer["out"], values, scales,
                                          layer["bfloat16_rows"])
        if "bias" in layer:
            module.bias = torch.nn.Parameter(packed.tensor(index["buffers"][layer["bias"]]), requires_grad=False)
        built.append(module)
    floats = dict(index["floats"])
    table = None
    if (portable := index.get("portable_embedding")) is not None:
        saved = {key: packed.tensor(index["buffers"][floats.pop(key)]) for key in list(floats)
                 if key.startswith(f"{portable}.")}
        table = QuantizedWeight.from_tensors(saved, portable)
    for key, number in floats.items():
        if not assign(model, key, packed.tensor(index["buffers"][number])):
            return None
    for place in index["placements"]:
        parent, _, leaf = place["name"].rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        layer = built[place["layer"]]
        setattr(owner, leaf, QuantizedPart(layer, place["start"], place["end"]) if "start" in place else layer)
    if index.get("embedding"):
        embedding = model.get_input_embeddings()
        model.set_input_embeddings(QuantizedEmbedding(model.get_output_embeddings(), embedding.weight.dtype))
    if table is not None:
        model.set_input_embeddings(PortableEmbedding(table, dtype))
    return model
