"""Tiny Llama GGUF files of each tensor type, written here with gguf-py's writer.

gguf-py quantizes Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 but none of the K types; for those the
blocks are random but valid (any bytes are a valid block once its float16 scales are
finite), and gguf-py's dequantizer gives the reference values. The tensors are laid out as
llama.cpp's converter lays them out (q and k rows permuted), so transformers' GGUF reader
loads the file as it loads a downloaded one.
"""

from __future__ import annotations

from pathlib import Path

from tiny_models import CHATML, train_tokenizer

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 256, 512, 2, 4, 2  # K-quant rows are 256 weights
# float16 fields per block
SCALE_OFFSETS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q2_K": (80, 82), "TQ2_0": (64,)}

# Q4_K_M as llama.cpp's quantizer mixes it: Q6_K for the value and down projections (llama.cpp:
# of half the layers) and for the embedding a tied model's output shares, Q4_K elsewhere.
Q4_K_M = {"attn_v": "Q6_K", "ffn_down": "Q6_K", "token_embd": "Q6_K"}


def _permute(w, heads):
    """llama.cpp's converter's order of q and k rows (transformers' GGUF reader reverses it)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def random_blocks(kind: str, rows: int, cols: int, seed: int):
    """uint8 [rows, bytes per row] of valid `kind` blocks: random bytes, float16 scales of a plausible size."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    for offset in SCALE_OFFSETS[kind]:
        scales = rng.uniform(0.0005, 0.002, size=data.shape[0]).astype(np.float16)
        data[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, -1)


def encode(kind: str, w, seed: int):
    """The float32 weight [rows, cols] as `kind`: gguf-py's quantizer, random blocks for K types, or floats."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if kind == "F32":
        return w.astype(np.float32)
    if kind == "F16":
        return w.astype(np.float16)
    if kind in SCALE_OFFSETS:
        return random_blocks(kind, *w.shape, seed)
    return quants.quantize(w.astype(np.float32), GGMLQuantizationType[kind])


def write_tiny_llama_gguf(path: Path, kind: str, mix: dict[str, str] | None = None, seed: int = 0,
                          hidden: int = HIDDEN, intermediate: int = INTERMEDIATE, layers: int = LAYERS,
                          tied: bool = True) -> Path:
    """A tiny Llama GGUF whose 2-D weights are `kind` (those named in `mix` another type), norms F32.

    Weights are random; with a K type the blocks themselves are random, so the file's
    dequantized values, not any float model, are what a loader must reproduce.
    """
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter, TokenType

    tokenizer = train_tokenizer()
    vocab = len(tokenizer)
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // HEADS)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    writer.add_token_list([by_id[i] for i in range(vocab)])
    specials = set(tokenizer.all_special_ids)
    writer.add_token_types([TokenType.CONTROL if i in specials else TokenType.NORMAL for i in range(vocab)])
    merges = tokenizer.backend_tokenizer.model.__getstate__()
    import json

    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(merges)["merges"]]
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_chat_template(CHATML)

    def weight(rows, cols):
        return (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)

    count = iter(range(seed, seed + 1000))

    def add(name, w, short):
        chosen = (mix or {}).get(short, kind)
        data = encode(chosen, w, next(count))
        raw = None if chosen in ("F32", "F16") else GGMLQuantizationType[chosen]
        writer.add_tensor(name, data, raw_dtype=raw)

    head_dim = hidden // HEADS
    add("token_embd.weight", weight(vocab, hidden), "token_embd")
    writer.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    if not tied:
        add("output.weight", weight(vocab, hidden), "output")
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        add(f"blk.{i}.attn_q.weight", _permute(weight(hidden, hidden), HEADS), "attn_q")
        add(f"blk.{i}.attn_k.weight", _permute(weight(KV_HEADS * head_dim, hidden), KV_HEADS), "attn_k")
        add(f"blk.{i}.attn_v.weight", weight(KV_HEADS * head_dim, hidden), "attn_v")
        add(f"blk.{i}.attn_output.weight", weight(hidden, hidden), "attn_output")
        add(f"blk.{i}.ffn_gate.weight", weight(intermediate, hidden), "ffn_gate")
        add(f"blk.{i}.ffn_up.weight", weight(intermediate, hidden), "ffn_up")
        add(f"blk.{i}.ffn_down.weight", weight(hidden, intermediate), "ffn_down")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
