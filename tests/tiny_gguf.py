"""Tiny Llama GGUF files of each tensor type, written by lmpipe's own writer (lmpipe.models.synthetic).

gguf-py quantizes Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 but none of the K types; for those the
blocks are random but valid (any bytes are a valid block once its float16 scales are
finite), and gguf-py's dequantizer gives the reference values. The vocabulary is the tests'
small trained tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import CHATML, train_tokenizer

from lmpipe.models.synthetic import Shape, vocabulary_of_tokenizer, write_gguf
from lmpipe.models.synthetic import encode as encode_random

RANDOM_TYPES = {"Q4_K", "Q5_K", "Q6_K", "Q2_K", "TQ2_0"}  # types of random blocks (gguf-py quantizes none of them)
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 256, 512, 2, 4, 2  # K-quant rows are 256 weights
STD = 0.05

# Q4_K_M as llama.cpp's quantizer mixes it, made simple: Q6_K for the value and down projections
# (llama.cpp: of some layers) and for the embedding a tied model's output shares, Q4_K elsewhere.
Q4_K_M = {"attn_v": "Q6_K", "ffn_down": "Q6_K", "token_embd": "Q6_K"}


def encode(kind: str, w, seed: int):
    """The float32 weight [rows, cols] as `kind`: gguf-py's quantizer or floats; random valid blocks for K types."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if kind == "F32":
        return w.astype(np.float32)
    if kind == "F16":
        return w.astype(np.float16)
    if kind in RANDOM_TYPES:
        return encode_random(kind, *w.shape, np.random.default_rng(seed), float(w.std()))
    return quants.quantize(w.astype(np.float32), GGMLQuantizationType[kind])


def write_tiny_llama_gguf(path: Path, kind: str, mix: dict[str, str] | None = None, seed: int = 0,
                          hidden: int = HIDDEN, intermediate: int = INTERMEDIATE, layers: int = LAYERS,
                          tied: bool = True) -> Path:
    """A tiny Llama GGUF whose 2-D weights are `kind` (those named in `mix` another type), norms F32.

    Weights are random; with a K type the blocks themselves are random, so the file's
    dequantized values, not any float model, are what a loader must reproduce.
    """
    shape = Shape("llama", hidden, layers, HEADS, KV_HEADS, intermediate, tied=tied, context=256)
    vocabulary = vocabulary_of_tokenizer(train_tokenizer(), CHATML)
    return write_gguf(path, shape, kind, vocabulary, seed, name="tiny", std=STD,
                      types=lambda short, layer, layers: (mix or {}).get(short.removesuffix("_tied"), kind))
