"""Random-weight GGUF files of real models' shapes: lm-bench at the sizes people run (lm-bench --synthetic).

A random-weight model has no values to keep, so its tensors are made here and written straight
into GGUF files with gguf-py's writer, one tensor at a time (the writer is told every tensor's
shape first, then given each tensor's bytes in turn): a 7B model's float32 weights (four bytes
a weight) are never held, only one tensor's. The types llama.cpp's users download:

- F16: normal random weights (standard deviation WEIGHT_STD) as float16.
- Q4_0: the same weights quantized by gguf-py's own quantizer.
- Q4_K_M: llama.cpp's mix (Q6_K for the output and for the value and down projections of some
  layers, Q4_K elsewhere; llama_tensor_get_type), its blocks random but valid. gguf-py quantizes
  none of the K types, but any bytes are a valid block once its float16 scales are finite; Q4_K's
  minimums are set from its scales (m ≈ 15/16·sc with dmin = 8d) so each group's weights are
  centred near 0, as a trained model's are. gguf-py dequantizes them; llama.cpp runs them.

Every file carries a real tokenizer's vocabulary in its metadata (by default the embedded
SmolLM2's, copied field by field from its GGUF), so transformers, lmpipe and llama.cpp load it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import UsageError
from . import gguf_reader

TYPES = ("Q4_K_M", "Q4_0", "F16")  # the file types written; the first is the default of NAME without :TYPE
WEIGHT_STD = 0.02  # the random weights' standard deviation, as models are initialised
CHUNK_ROWS = 4096  # rows made and encoded at once: one wide tensor's float32 is never made whole


@dataclass(frozen=True)
class Shape:
    """A model's shape as its GGUF describes it (llama.cpp's key names per architecture)."""

    architecture: str  # general.architecture: llama, qwen2 or gemma2
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tied: bool = True  # the output head is the token embedding (no output.weight)
    head_dim: int | None = None  # default hidden // heads
    rope_base: float = 10000.0
    context: int = 4096
    extra: dict[str, Any] = field(default_factory=dict)  # more architecture keys, written as they are

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads


# Real models' shapes (from their config.json), with SmolLM2's vocabulary in place of their own.
SHAPES = {
    "llama-3.2-1b": Shape("llama", 2048, 16, 32, 8, 8192, head_dim=64, rope_base=500000.0, context=131072),
    "qwen2.5-1.5b": Shape("qwen2", 1536, 28, 12, 2, 8960, rope_base=1000000.0, context=32768),
    "gemma-2-2b": Shape("gemma2", 2304, 26, 8, 4, 9216, head_dim=256, context=8192,
                        extra={"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                               "attention.sliding_window": 4096}),
    "llama-2-7b": Shape("llama", 4096, 32, 32, 32, 11008, tied=False),
    # A tiny shape for tests: every code path of the real ones, in a second.
    "tiny-llama": Shape("llama", 256, 2, 4, 2, 512, context=256),
}


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer as GGUF metadata: (key, value, value type, element type) per field."""

    fields: tuple[tuple[str, Any, Any, Any], ...]

    @property
    def size(self) -> int:
        return next(len(v) for k, v, _, _ in self.fields if k == "tokenizer.ggml.tokens")


def vocabulary_of_gguf(path: Path) -> Vocabulary:
    """Every tokenizer.* field of the GGUF file `path`, as the file types them."""
    from gguf import GGUFValueType

    reader = gguf_reader.reader(path)
    out = []
    for key, f in reader.fields.items():
        if key.startswith("tokenizer."):
            sub = f.types[1] if f.types[0] == GGUFValueType.ARRAY else None
            out.append((key, f.contents(), f.types[0], sub))
    return Vocabulary(tuple(out))


def vocabulary_of_tokenizer(tokenizer: Any, chat_template: str | None = None) -> Vocabulary:
    """A transformers byte-level BPE tokenizer (GPT-2's kind) as GGUF metadata."""
    import json

    from gguf import GGUFValueType as T
    from gguf import TokenType

    size = len(tokenizer)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    specials = set(tokenizer.all_special_ids)
    merges = json.loads(tokenizer.backend_tokenizer.model.__getstate__())["merges"]
    fields = [
        ("tokenizer.ggml.model", "gpt2", T.STRING, None),
        ("tokenizer.ggml.pre", "default", T.STRING, None),
        ("tokenizer.ggml.tokens", [by_id[i] for i in range(size)], T.ARRAY, T.STRING),
        ("tokenizer.ggml.token_type", [int(TokenType.CONTROL if i in specials else TokenType.NORMAL)
                                       for i in range(size)], T.ARRAY, T.INT32),
        ("tokenizer.ggml.merges", [" ".join(m) if isinstance(m, list) else m for m in merges], T.ARRAY, T.STRING),
        ("tokenizer.ggml.bos_token_id", tokenizer.bos_token_id, T.UINT32, None),
        ("tokenizer.ggml.eos_token_id", tokenizer.eos_token_id, T.UINT32, None),
        ("tokenizer.ggml.padding_token_id", tokenizer.pad_token_id, T.UINT32, None),
    ]
    if chat_template:
        fields.append(("tokenizer.chat_template", chat_template, T.STRING, None))
    return Vocabulary(tuple(fields))


def embedded_vocabulary() -> Vocabulary:
    """SmolLM2's vocabulary, from the embedded model's GGUF."""
    from .resolve import embedded_gguf

    return vocabulary_of_gguf(embedded_gguf())


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose value and down projections a _M mix keeps at more bits."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def q4_k_m(short: str, layer: int, layers: int) -> str:
    """The type of a tensor (its GGUF short name, its layer) in llama.cpp's Q4_K_M."""
    if short in ("output", "token_embd_tied"):
        return "Q6_K"
    if short in ("attn_v", "ffn_down") and use_more_bits(layer, layers):
        return "Q6_K"
    return "Q4_K"


def type_rule(kind: str) -> Callable[[str, int, int], str]:
    """The GGUF type of each 2-D weight (short name, layer, layers) of a file of type `kind`."""
    if kind == "Q4_K_M":
        return q4_k_m
    return lambda short, layer, layers: kind


def q4_k_blocks(rows: int, cols: int, rng: Any, std: float = WEIGHT_STD) -> Any:
    """uint8 [rows, bytes per row] of valid Q4_K super-blocks whose weights are centred near 0:
    random nibbles q and 6-bit scales sc, minimums m = round(15/16·sc) with dmin = 8d, so a
    weight d·sc·q − dmin·m is about d·sc·(q − 7.5)."""
    import numpy as np

    blocks = rows * cols // 256
    sc = rng.integers(1, 64, size=(blocks, 8), dtype=np.uint8)
    m = np.rint(sc * (15 / 16)).astype(np.uint8)
    d = np.full(blocks, std / (4.6 * 36.7), dtype=np.float16)  # std of q − 7.5, root mean square of sc
    scales = np.empty((blocks, 12), dtype=np.uint8)  # llama.cpp's get_scale_min_k4 layout
    scales[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    out = np.empty((blocks, 144), dtype=np.uint8)
    out[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    out[:, 2:4] = (d * np.float16(8)).view(np.uint8).reshape(-1, 2)
    out[:, 4:16] = scales
    out[:, 16:] = rng.integers(0, 256, size=(blocks, 128), dtype=np.uint8)
    return out.reshape(rows, -1)


# Offsets of the float16 scales in a block, for the K types made of random bytes.
RANDOM_SCALE_OFFSETS = {"Q5_K": (0, 2), "Q6_K": (208,), "Q2_K": (80, 82), "TQ2_0": (64,)}


def random_blocks(kind: str, rows: int, cols: int, rng: Any, std: float = WEIGHT_STD) -> Any:
    """uint8 [rows, bytes per row] of valid `kind` blocks: random bytes, float16 scales set to a
    plausible size (Q6_K's int8 sub-scales are signed, so its weights are centred by themselves)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if kind == "Q4_K":
        return q4_k_blocks(rows, cols, rng, std)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    data = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    if kind == "Q6_K":
        data[:, 192:208] = rng.integers(-16, 17, size=(len(data), 16), dtype=np.int8).view(np.uint8)
    for offset in RANDOM_SCALE_OFFSETS[kind]:
        scale = std / (18.5 * 9.5) if kind == "Q6_K" else rng.uniform(0.25, 1.0) * std / 20
        data[:, offset:offset + 2] = np.full(len(data), scale, dtype=np.float16).view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, -1)


def encode(kind: str, rows: int, cols: int, rng: Any, std: float = WEIGHT_STD) -> Any:
    """A random [rows, cols] weight as `kind`: floats (F32, F16), gguf-py's quantizer on normal
    weights, or random valid blocks for the K types and others gguf-py cannot quantize."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if kind in ("Q4_K", *RANDOM_SCALE_OFFSETS):
        return random_blocks(kind, rows, cols, rng, std)
    parts = []
    for start in range(0, rows, CHUNK_ROWS):
        w = rng.standard_normal((min(CHUNK_ROWS, rows - start), cols), dtype=np.float32) * np.float32(std)
        parts.append(w if kind == "F32" else w.astype(np.float16) if kind == "F16"
                     else quants.quantize(w, GGMLQuantizationType[kind]))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def tensors(shape: Shape, vocab: int) -> list[tuple[str, tuple[int, ...], str, int]]:
    """(GGUF name, shape [rows, cols] or [n], short name, layer) of every tensor, in llama.cpp's order."""
    h, d = shape.hidden, shape.head_size
    out: list[tuple[str, tuple[int, ...], str, int]] = [
        ("token_embd.weight", (vocab, h), "token_embd_tied" if shape.tied else "token_embd", -1),
        ("output_norm.weight", (h,), "norm", -1)]
    if not shape.tied:
        out.append(("output.weight", (vocab, h), "output", -1))
    for i in range(shape.layers):
        b = f"blk.{i}"
        out += [(f"{b}.attn_norm.weight", (h,), "norm", i),
                (f"{b}.attn_q.weight", (shape.heads * d, h), "attn_q", i),
                (f"{b}.attn_k.weight", (shape.kv_heads * d, h), "attn_k", i),
                (f"{b}.attn_v.weight", (shape.kv_heads * d, h), "attn_v", i),
                (f"{b}.attn_output.weight", (h, shape.heads * d), "attn_output", i)]
        if shape.architecture == "qwen2":  # q, k and v have biases
            out += [(f"{b}.attn_{p}.bias", (n * d,), "bias", i)
                    for p, n in (("q", shape.heads), ("k", shape.kv_heads), ("v", shape.kv_heads))]
        if shape.architecture == "gemma2":
            out.append((f"{b}.post_attention_norm.weight", (h,), "norm", i))
        out += [(f"{b}.ffn_norm.weight", (h,), "norm", i),
                (f"{b}.ffn_gate.weight", (shape.intermediate, h), "ffn_gate", i),
                (f"{b}.ffn_up.weight", (shape.intermediate, h), "ffn_up", i),
                (f"{b}.ffn_down.weight", (h, shape.intermediate), "ffn_down", i)]
        if shape.architecture == "gemma2":
            out.append((f"{b}.post_ffw_norm.weight", (h,), "norm", i))
    return out


def write_gguf(path: Path, shape: Shape, kind: str, vocabulary: Vocabulary, seed: int = 0,
               types: Callable[[str, int, int], str] | None = None, name: str = "synthetic",
               std: float = WEIGHT_STD, encoder: Callable[..., Any] | None = None) -> Path:
    """Write a random-weight model of `shape` to `path` as GGUF type `kind` (TYPES, or any single
    tensor type gguf-py writes), a tensor at a time. `types` overrides the type per 2-D weight
    (short name, layer, layers); norms and biases are F32. `encoder(kind, rows, cols, rng, std)`
    replaces `encode` (the tests' own distribution of random blocks)."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

    rule = types or type_rule(kind)
    arch = shape.architecture
    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_key_length(shape.head_size)
    writer.add_value_length(shape.head_size)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(shape.rope_base)
    writer.add_rope_dimension_count(shape.head_size)
    writer.add_vocab_size(vocabulary.size)
    for key, value in shape.extra.items():
        if isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    for key, value, vtype, sub in vocabulary.fields:
        writer.add_key_value(key, value, vtype, sub_type=sub)

    plan = []
    for tname, dims, short, layer in tensors(shape, vocabulary.size):
        chosen = "F32" if len(dims) == 1 else rule(short, layer, shape.layers)
        qtype = GGMLQuantizationType[chosen]
        block, size = GGML_QUANT_SIZES[qtype]
        elements = int(np.prod(dims))
        nbytes = elements // block * size
        # The shape in elements, as GGUFWriter records it for a float array or a block one.
        if chosen in ("F32", "F16"):
            writer.add_tensor_info(tname, dims, np.dtype(np.float32 if chosen == "F32" else np.float16), nbytes)
        else:
            writer.add_tensor_info(tname, (*dims[:-1], dims[-1] // block * size), np.dtype(np.uint8), nbytes, qtype)
        plan.append((dims, chosen, short))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for dims, chosen, short in plan:
        if len(dims) == 1:  # a norm near 1, a bias near 0
            data = rng.standard_normal(dims[0], dtype=np.float32) * np.float32(0.1) + np.float32(short == "norm")
            writer.write_tensor_data(data)
        else:
            writer.write_tensor_data((encoder or encode)(chosen, dims[0], dims[1], rng, std))
    writer.close()
    return path


def synthetic_path(spec: str) -> tuple[str, str, Path]:
    """(shape name, file type, path in lmpipe's cache) of NAME[:TYPE]; a one-line error for an unknown one."""
    name, _, kind = spec.partition(":")
    kind = kind or TYPES[0]
    if name not in SHAPES:
        raise UsageError(f"--synthetic: no shape {name!r} (known: {', '.join(SHAPES)})")
    if kind not in TYPES:
        raise UsageError(f"--synthetic: no type {kind!r} (known: {', '.join(TYPES)})")
    return name, kind, paths.synthetic_dir() / f"{name}-{kind}.gguf"


def ensure_synthetic(spec: str, notify: Callable[[str], None] = lambda _: None) -> Path:
    """The synthetic GGUF NAME[:TYPE] (SHAPES, TYPES), written into lmpipe's cache first if missing
    (into a temporary name, then renamed: an interrupted write leaves no file that looks whole)."""
    name, kind, path = synthetic_path(spec)
    if path.is_file():
        return path
    notify(f"writing a random-weight {name} as {kind} to {path} (once)")
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        write_gguf(part, SHAPES[name], kind, embedded_vocabulary(), name=f"synthetic {name}")
        part.replace(path)
    finally:
        part.unlink(missing_ok=True)
    return path
