"""A quantized GGUF's 4-bit blocks as int4 weights: `--quantize int4` runs the file's own values.

Q4_0 and Q4_1 tensors are blocks of 32 weights along a row, each with a float16 scale d (and,
for Q4_1, a minimum m): w = d * (q - 8), or w = d * q + m. That is the int4 kernel's group of
32 with a scale and a zero, (q - 8) * scale + zero, with zero = m + 8d. Taken as they are,
they are the file's values by construction; quantizing the dequantized floats again gives
the same values only for blocks whose weights span their whole range (SmolLM2's Q4_1 blocks
do: the same perplexity either way, measured), and costs a pass over every weight.

transformers names the tensors and reorders the rows of some (Llama's q and k, which
llama.cpp's converter permutes); lmpipe takes both from transformers' own GGUF reader, and
the caller keeps a block weight only where it dequantizes to exactly the float tensor
transformers made of the same file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import gguf_reader
from .quantize import INT4_GROUP, QuantizedWeight

KINDS = {"Q4_0": 18, "Q4_1": 20}  # bytes per block of 32: float16 scale (and minimum), then 16 bytes of nibbles


@dataclass(frozen=True)
class Int4Blocks:
    """One tensor's blocks, as the file holds them (a view of its mapping), and the row order transformers gives it."""

    kind: str
    data: Any  # numpy uint8 [rows, bytes per row]
    order: Any  # numpy int64 [rows]: transformers' row i is the file's row order[i]

    def _parts(self):
        import numpy as np
        import torch

        rows = len(self.order)
        blocks = np.ascontiguousarray(self.data[self.order]).reshape(rows, -1, KINDS[self.kind])
        scales = torch.from_numpy(blocks[..., 0:2].copy().view(np.float16)).float()[..., 0]
        offset = 4 if self.kind == "Q4_1" else 2
        minimums = (torch.from_numpy(blocks[..., 2:4].copy().view(np.float16)).float()[..., 0]
                    if self.kind == "Q4_1" else None)
        nibbles = torch.from_numpy(blocks[..., offset:].copy())
        # A block's byte j holds weight j in its low nibble and weight j + 16 in its high one.
        q = torch.cat([nibbles & 0x0F, nibbles >> 4], dim=-1).reshape(rows, -1)
        return q, scales, minimums

    def dequantized(self):
        """The float32 weight, computed as gguf-py (and so transformers) computes it: bit for bit."""
        q, scales, minimums = self._parts()
        rows, groups = scales.shape
        q = q.reshape(rows, groups, INT4_GROUP).float()
        if minimums is None:
            w = scales[..., None] * (q - 8)
        else:
            w = scales[..., None] * q + minimums[..., None]
        return w.reshape(rows, -1)

    def weight(self) -> QuantizedWeight:
        """The same values in lmpipe's portable int4 layout (scales and zeros rounded to bfloat16, as the
    kernel takes them)."""
        import torch

        q, scales, minimums = self._parts()
        zeros = torch.zeros_like(scales) if minimums is None else minimums + 8 * scales
        values = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
        return QuantizedWeight("int4", values, scales.to(torch.bfloat16), zeros.to(torch.bfloat16))


def int4_blocks(gguf: Path, model: Any) -> dict[str, Int4Blocks]:
    """The GGUF's Q4_0 and Q4_1 weights by the name of the module transformers loads each into.

    `model` is the model the file was converted into (its meta-device skeleton will do): its
    names come from transformers' map of GGUF names. Tensors of other kinds are left out.
    """
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor, get_gguf_hf_weights_map

    reader = gguf_reader.reader(gguf)
    field = reader.get_field("general.architecture")
    architecture = bytes(field.parts[field.data[0]]).decode() if field is not None else ""
    config = model.config.to_dict()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config)
    names = get_gguf_hf_weights_map(model, processor)
    out = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind not in KINDS or tensor.data.ndim != 2:
            continue
        rows = tensor.data.shape[0]
        # The reordering transformers gives this tensor's rows, learnt from a column of row numbers.
        result = processor.process(weights=np.arange(rows, dtype=np.int64)[:, None], name=tensor.name,
                                   tensor_key_mapping=names, parsed_parameters={"config": config, "tensors": {}})
        order = np.asarray(result.weights).reshape(-1)
        if result.name not in names or order.shape != (rows,) or not np.array_equal(np.sort(order), np.arange(rows)):
            continue  # not a plain reordering of rows: the caller quantizes the float tensor instead
        name = names[result.name]
        if name.endswith(".weight"):
            out[name[:-len(".weight")]] = Int4Blocks(kind, tensor.data, order)
    return out
