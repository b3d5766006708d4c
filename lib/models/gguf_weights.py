"""A GGUF's tensors read one at a time from its memory map into lmpipe's layers: no float32 model.

llama.cpp runs a GGUF's blocks as they are. lmpipe maps each tensor type onto a format its
kernels take (lmpipe.models.quantize.QuantizedWeight), a row chunk at a time, so a load holds
the file's mapping and the packed layers, never the float32 model, in memory or on disk:

- Q4_K and Q4_0 run on their own scales where lmpipe's kernels run without AMX (own_scales_run;
  QuantizedWeight's q4k and q4_0, q4k_mm and q4_0_mm): Q4_K's float16 d and dmin and 6-bit
  scales and minimums, weight = (d·sc)·q − dmin·m, at 4.625 bits (Q4_K's 4.5); Q4_0's float16
  d, weight = d·(q − 8), at Q4_0's 4.5 bits. A weight is the file's exactly.
- Q4_1 (and Q4_0 and Q4_K elsewhere) are groups of 32 weights with a
  scale and a minimum: int4's own groups. Q4_K's super-block of 256 is eight such groups,
  weight = d·sc·q − dmin·m, which is int4's (q − 8)·scale + zero with scale = d·sc and
  zero = 8·d·sc − dmin·m. The int4 format keeps scale and zero in bfloat16 (the kernels read
  them so), so a weight is the file's within bfloat16's rounding of those two (2^-8 of each,
  relative).
- Q5_0, Q5_1, Q5_K, Q6_K and Q8_0 have no int4 form: their values (gguf-py's dequantizer) are
  int8 per output row, within half a step of max|row|/127 of the file's.
- An untied model's token embedding of those types stays in their form too (PortableEmbedding):
  each row is dequantized as it is looked up, and no float32 table is made.
- F32, F16 and BF16 are floats, quantized only when --quantize asks (as a float model's are).
- Any other type (IQ*, TQ*, Q2_K, Q3_K) is dequantized alone, tensor by tensor, into floats.

transformers' GGUF reader still gives the config, the tokenizer, the tensors' names and the
order of their rows (llama.cpp's converter permutes Llama's q and k); the row order is learnt
from a column of row numbers, as lmpipe.models.gguf_blocks learns it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from . import gguf_reader
from .quantize import INT4_GROUP, QuantizedWeight, int8_rows, layer_modes, module_name, quantizable, quantize_weight

INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")
INT8_TYPES = ("Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")
FLOAT_TYPES = ("F32", "F16", "BF16")
CHUNK_ROWS = 256  # rows decoded at once: a wide tensor's float32 is never made whole
Q4_K_BLOCK = 144  # bytes per 256 weights: float16 d and dmin, 12 bytes of 6-bit scales and minimums, 128 of nibbles


def int4_weight(kind: str, data: Any, order: Any) -> QuantizedWeight:
    """The Q4_0, Q4_1 or Q4_K tensor `data` (uint8 [rows, bytes per row]) in int4's portable
    layout, its rows taken in `order` (transformers' row i is the file's row order[i]): by the
    kernels' build (gguf_blocks.cpp) where it is built, else by numpy; the same values."""
    import torch

    if _built():
        return QuantizedWeight("int4", *torch.ops.lmpipe.gguf_int4(_tensor(data), _tensor(order, "int64"), kind))
    return int4_weight_numpy(kind, data, order)


def q4_0_weight(data: Any, order: Any) -> QuantizedWeight:
    """The Q4_0 tensor `data` as it is (QuantizedWeight's q4_0: int4's nibbles and the file's float16
    d per block of 32), its rows taken in `order`; by the kernels' build, which q4_0 runs on."""
    import numpy as np
    import torch

    values, _, _ = torch.ops.lmpipe.gguf_int4(_tensor(data), _tensor(order, "int64"), "Q4_0")
    d = np.ascontiguousarray(data.reshape(data.shape[0], -1, 18)[order, :, :2]).view(np.float16)
    return QuantizedWeight("q4_0", values, torch.from_numpy(d.reshape(len(order), -1)))


def q4k_weight(data: Any, order: Any) -> QuantizedWeight:
    """The Q4_K tensor `data` as it is (QuantizedWeight's q4k: the file's d, dmin, scales and
    minimums), its rows taken in `order`; by the kernels' build, which q4k runs on."""
    import torch

    return QuantizedWeight("q4k", *torch.ops.lmpipe.gguf_q4k(_tensor(data), _tensor(order, "int64")))


def int4_weight_numpy(kind: str, data: Any, order: Any) -> QuantizedWeight:
    """int4_weight in numpy, a chunk of rows at a time."""
    import numpy as np
    import torch

    rows = len(order)
    columns = _columns(kind, data)
    # numpy, one thread: torch's pool, woken for each chunk's copy, stalls whenever the other cores are busy.
    values = np.empty((rows, columns // 2), dtype=np.uint8)
    scales = np.empty((rows, columns // INT4_GROUP), dtype=np.float32)
    zeros = np.empty_like(scales)
    for start in range(0, rows, CHUNK_ROWS):
        end = min(start + CHUNK_ROWS, rows)
        values[start:end], scales[start:end], zeros[start:end] = _int4_rows(kind, data[order[start:end]])
    return QuantizedWeight("int4", torch.from_numpy(values), torch.from_numpy(scales).to(torch.bfloat16),
                           torch.from_numpy(zeros).to(torch.bfloat16))


def _int4_rows(kind: str, data: Any) -> tuple[Any, Any, Any]:
    """int4's portable bytes, float32 scales and float32 zeros (numpy) of these rows of blocks."""
    import numpy as np

    rows = data.shape[0]
    size = {"Q4_0": 18, "Q4_1": 20, "Q4_K": Q4_K_BLOCK}[kind]
    blocks = np.ascontiguousarray(data).reshape(rows, -1, size)

    def halves(at: int) -> Any:  # a float16 field of every block, float32 [rows, blocks, 1]
        return blocks[..., at:at + 2].copy().view(np.float16).astype(np.float32)

    d = halves(0)
    if kind == "Q4_K":
        from gguf.quants import Q4_K

        dmin = halves(2)
        scales_mins = Q4_K.get_scale_min(blocks[..., 4:16].reshape(-1, 12))
        sc, m = (a.astype(np.float32).reshape(rows, -1, 8) for a in scales_mins)
        scale, zero = d * sc, 8 * d * sc - dmin * m  # d·sc·q − dmin·m = (q − 8)·scale + zero
        nibbles = blocks[..., 16:]
    else:
        scale = d
        zero = np.zeros_like(d) if kind == "Q4_0" else halves(2) + 8 * d  # Q4_1: d·q + m
        nibbles = blocks[..., 2 if kind == "Q4_0" else 4:]
    return _regrouped(nibbles, rows, 16 if kind == "Q4_K" else 8), scale.reshape(rows, -1), zero.reshape(rows, -1)


def _regrouped(nibbles: Any, rows: int, pairs_per_part: int) -> Any:
    """int4's bytes (byte t of a group of 32: its weights 2t and 2t + 1) from GGUF's 4-bit parts of
    32 bytes (Q4_K: byte i holds weight i of one group low, of the next group high) or 16 (Q4_0,
    Q4_1: weight i of the block low, weight i + 16 high). In both, bytes 2t and 2t + 1 of a part
    make byte t of its low half and byte t of its high half: read as 16-bit pairs, that is two
    whole-array integer operations, where strided byte views touch every byte on its own."""
    import numpy as np

    pairs = nibbles.view(np.uint16).reshape(rows, -1, pairs_per_part)
    low = ((pairs & 0x0F) | ((pairs >> 4) & 0xF0)).astype(np.uint8)
    high = (((pairs >> 4) & 0x0F) | ((pairs >> 8) & 0xF0)).astype(np.uint8)
    return np.stack([low, high], axis=2).reshape(rows, -1)


def int8_weight(kind: str, data: Any, order: Any) -> QuantizedWeight:
    """A tensor of INT4_TYPES or INT8_TYPES as int8 per output row: by the kernels' build
    (gguf_blocks.cpp) where it is built, else through gguf-py's dequantizer; the same values."""
    import torch

    if kind in INT4_TYPES + INT8_TYPES and _built():
        values, scales = torch.ops.lmpipe.gguf_int8(_tensor(data), _tensor(order, "int64"), kind)
        return QuantizedWeight("int8", values, scales.to(torch.bfloat16))
    return int8_weight_numpy(kind, data, order)


def int8_weight_numpy(kind: str, data: Any, order: Any) -> QuantizedWeight:
    """int8_weight through gguf-py's dequantizer, a chunk of rows at a time."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, dequantize

    rows = len(order)
    values = np.empty((rows, _columns(kind, data)), dtype=np.int8)
    scales = np.empty(rows, dtype=np.float32)
    for start in range(0, rows, CHUNK_ROWS):
        part = dequantize(data[order[start:start + CHUNK_ROWS]], GGMLQuantizationType[kind])
        end = start + len(part)
        values[start:end], scales[start:end] = int8_rows(part.astype(np.float32, copy=False))
    return QuantizedWeight("int8", torch.from_numpy(values), torch.from_numpy(scales).to(torch.bfloat16))


def _built() -> bool:
    """Whether the kernels' build (which holds the conversions) runs here."""
    from .kernels import vnni

    return vnni.available()


OWN_MODES = {"Q4_K": "q4k", "Q4_0": "q4_0"}  # types run on their own scales where own_scales_run()


def _converter(mode: str, kind: str) -> Callable[[Any, Any], QuantizedWeight]:
    """What turns a `kind` tensor's blocks and row order into a weight of `mode`."""
    converters: dict[str, Callable[[Any, Any], QuantizedWeight]] = {
        "int4": partial(int4_weight, kind), "q4k": q4k_weight, "q4_0": q4_0_weight, "int8": partial(int8_weight, kind)}
    return converters[mode]


def own_scales_run() -> bool:
    """Whether a GGUF's Q4_K and Q4_0 tensors run on their own scales (q4k, q4_0) here: where lmpipe's
    kernels run, except on a CPU with AMX, whose tiles carry int4's prompts and batches (1.5x its
    VNNI code) and have no code for those yet; there they run as int4, as on a CPU without
    lmpipe's kernels."""
    from .kernels import vnni

    return vnni.available() and vnni.selected != "amx"


def _tensor(array: Any, dtype: Any = None) -> Any:
    """A torch view of numpy `array` (the file's read-only mapping: the ops only read it), or of
    a contiguous copy of it as `dtype` (a row order, as int64)."""
    import warnings

    import numpy as np
    import torch

    array = np.asarray(array) if dtype is None else np.ascontiguousarray(array, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": nothing writes through it
        return torch.from_numpy(array)


def gguf_dequantized(kind: str, data: Any) -> Any:
    """float32 torch tensor of `data` as gguf-py dequantizes it (transformers' reference values)."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, dequantize

    values = np.ascontiguousarray(dequantize(data, GGMLQuantizationType[kind]), dtype=np.float32)
    # An F32 tensor comes back as the file's read-only mapping: the model gets memory of its own.
    return torch.from_numpy(values if values.flags.writeable else values.copy())


def _columns(kind: str, data: Any) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    return data.shape[1] // size * block


def _arange(n: int) -> Any:
    import numpy as np

    return np.arange(n, dtype=np.int64)


def _name_maps_built_once() -> None:
    """gguf-py's get_tensor_name_map, remembered: transformers' get_gguf_hf_weights_map asks for
    it again for every module of the model (over 200 times for a 16-layer Llama), and each
    answer is built afresh from every architecture's tables: seconds of a load. The map is
    a pure function of its arguments and is only read."""
    import functools

    import gguf

    if not hasattr(gguf.get_tensor_name_map, "cache_info"):
        # transformers imports the name from the package inside the function, at each call
        setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))  # noqa: B010


class _Names:
    """transformers' names for a GGUF's tensors, and the order of their rows."""

    def __init__(self, reader: Any, model: Any):
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

        _name_maps_built_once()

        field = reader.get_field("general.architecture")
        architecture = bytes(field.parts[field.data[0]]).decode() if field is not None else ""
        self.config = model.config.to_dict()
        self.processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=self.config)
        self.names = get_gguf_hf_weights_map(model, self.processor)

    def _process(self, weights: Any, name: str) -> tuple[str | None, Any]:
        result = self.processor.process(weights=weights, name=name, tensor_key_mapping=self.names,
                                        parsed_parameters={"config": self.config, "tensors": {}})
        return self.names.get(result.name), result.weights

    def row_order(self, tensor: Any) -> tuple[str | None, Any]:
        """(transformers' name, its rows' order in the file) for a 2-D tensor whose processing only
        reorders rows; (None, None) for one it changes otherwise."""
        import numpy as np

        rows = tensor.data.shape[0]
        name, order = self._process(_arange(rows)[:, None], tensor.name)
        order = np.asarray(order).reshape(-1)
        if name is None or order.shape != (rows,) or not np.array_equal(np.sort(order), _arange(rows)):
            return None, None
        return name, order

    def floats(self, tensor: Any, kind: str) -> tuple[str | None, Any]:
        """(transformers' name, the tensor as transformers makes it: dequantized and processed)."""
        import numpy as np
        import torch

        name, weights = self._process(gguf_dequantized(kind, tensor.data).numpy(), tensor.name)
        return name, torch.from_numpy(np.ascontiguousarray(weights))


def load_gguf(auto: Any, path: Path, config: Any, dtype: Any, quantize: str | None, attention: str | None,
              notify: Callable[[str], None], cached: bool = True) -> tuple[Any, dict[str, dict[str, int]], str] | None:
    """The model of the GGUF `path`, its quantized tensors on lmpipe's kernels, per GGUF type how
    many tensors ran as what ("int4", "int8", "float"), and how its layers were packed: "mapped"
    (lmpipe.models.packed_cache, the GGUF not even opened), "packed" (and written there, where
    `cached`) or "none";
    None where only transformers' loader works (a tensor it names or reshapes in a way this does
    not follow)."""
    import torch

    from . import packed_cache
    from .kernels import vnni
    from .quantized_loading import assign, biases, finish

    target = packed_cache.folder(path, quantize, dtype) if cached and vnni.available() else None
    packed = packed_cache.open_packed(target) if target is not None else None
    if packed is not None:
        try:
            mapped = packed_cache.load_mapped(auto, config, dtype, attention, packed)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            mapped = None  # an index that does not fit this model or this lmpipe
        mapped = finish(mapped, None) if mapped is not None else None
        if mapped is not None:
            return mapped, packed.index["ran"], "mapped"
        # A damaged cache, or one another lmpipe wrote: pack from the file, and write it again.
    reader = gguf_reader.reader(path)
    kwargs = {"attn_implementation": attention} if attention else {}
    with torch.device("meta"):
        model = auto.from_config(config, dtype=dtype, **kwargs)
    names = _Names(reader, model)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    modes = layer_modes(model, linears, quantize) if quantize else {}
    head = module_name(model, model.get_output_embeddings())
    embedding = module_name(model, model.get_input_embeddings())
    tied = bool(getattr(config, "tie_word_embeddings", False)) and head in linears
    # An untied embedding of a type the kernels take stays as the file's blocks (not Gemma's scaled one).
    keeps_table = not tied and type(model.get_input_embeddings()) is torch.nn.Embedding
    weights: dict[str, QuantizedWeight] = {}
    table: QuantizedWeight | None = None  # an untied embedding's rows, kept as the file's blocks (PortableEmbedding)
    ran: dict[str, Counter] = {}
    unknown: set[str] = set()
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        quantized = kind not in FLOAT_TYPES
        name, order = names.row_order(tensor) if quantized and tensor.data.ndim == 2 else (None, None)
        owner = name.rpartition(".")[0] if name is not None and name.endswith(".weight") else None
        if owner == embedding and tied:
            owner = head  # a tied model's head: install looks the embedding up from its int8 values
        if owner == embedding and keeps_table and order is not None and kind in INT4_TYPES + INT8_TYPES:
            table_mode = (OWN_MODES[kind] if kind in OWN_MODES and own_scales_run() else
                          "int4" if kind in INT4_TYPES else "int8")
            table = _converter(table_mode, kind)(tensor.data, order)
            ran.setdefault(kind, Counter())[table.mode] += 1
            continue
        linear = linears.get(owner) if owner is not None else None
        mode = ("int4" if kind in INT4_TYPES and (owner != head or not tied) else
                "int8" if kind in INT4_TYPES + INT8_TYPES else None)
        own = OWN_MODES.get(kind)
        if mode == "int4" and own and linear is not None and quantizable(linear, own) and own_scales_run():
            mode = own  # on its own scales: the file's values, and its size
        if owner is not None and linear is not None and mode is not None and quantizable(linear, mode):
            weights[owner] = _converter(mode, kind)(tensor.data, order)
            ran.setdefault(kind, Counter())[mode] += 1
            continue
        if quantized and kind not in INT4_TYPES + INT8_TYPES:
            unknown.add(kind)
        name, value = names.floats(tensor, kind)
        if name is None:
            if tensor.name.endswith(".weight") and tensor.data.ndim == 2:
                return None  # a weight transformers maps in some other way
            continue
        owner = name.rpartition(".")[0]
        if tied and head is not None and owner == embedding and quantize and quantizable(linears[head], modes[head]):
            weights[head] = quantize_weight(value, modes[head])
            ran.setdefault(kind, Counter())[modes[head]] += 1
            continue
        if owner in linears and quantize and name.endswith(".weight") and quantizable(linears[owner], modes[owner]):
            weights[owner] = quantize_weight(value, modes[owner])
            ran.setdefault(kind, Counter())[modes[owner]] += 1
            continue
        if not assign(model, name, value.to(dtype)):
            return None
        ran.setdefault(kind, Counter())["float"] += 1
    if unknown:
        notify(f"{path.name}: lmpipe has no kernel for {', '.join(sorted(unknown))} tensors: "
               "those run as float32, dequantized one tensor at a time")
    if tied and head not in weights:
        linears[head].weight = model.get_input_embeddings().weight  # tied, as transformers ties them
    try:
        from .quantized_layers import PortableEmbedding, install  # torch: not at the top, which torch-free tools import

        install(model, weights, biases(model, weights))
        if table is not None:
            model.set_input_embeddings(PortableEmbedding(table, dtype))
    except (AttributeError, KeyError, ValueError):
        return None
    model = finish(model, None)
    if model is None:
        return None
    counts = {kind: dict(c) for kind, c in sorted(ran.items())}
    packing = "packed" if any(ran_as != "float" for c in counts.values() for ran_as in c) else "none"
    if packing == "packed" and target is not None:
        packed_cache.save(model, target, {"source": str(path.resolve()), "quantize": quantize, "dtype": str(dtype)},
                          counts)
    return model, counts, packing
