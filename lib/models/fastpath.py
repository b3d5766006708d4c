"""lmpipe's own forward pass for decoder-only transformers, gpt-fast style.

transformers' model code is general: per layer it dispatches through attention interfaces,
mask builders and cache objects, which on a CPU costs more per token than the matmuls of a
small model. This module runs the same weights through a short list of tensor operations: a
KV cache allocated once with a row per sequence, the model's own rotary embedding, and for
quantized models q/k/v and gate/up fused into one matmul each. The operations mirror transformers' Llama code (the same
RMSNorm arithmetic, SDPA with GQA packed for one query as transformers packs it), so greedy
float32 output stays token-identical to transformers' (tests/test_fast_decode.py checks it).

Other families are Llama with a few pieces changed, as llama.cpp's graph builders share one
skeleton: each piece is read from the model's own modules when the FastModel is built (a bias,
q/k norms, a layer's window or scale), and the one forward runs whichever pieces are there
(tests/test_fast_families.py checks each family token for token).

Rows of the cache are independent sequences with their own lengths, so the server can admit
a new request into a free row while the others keep decoding (continuous batching).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache as cache_function
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from .adapters import Lora, stack_of
from .kernels import vnni as vnni_kernels
from .quantize import lookup

if TYPE_CHECKING:
    from torch import Tensor

# Each joins once a tiny model of its own is tested token for token (tests/test_fast_families.py).
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "granite", "phi3", "smollm3", "gemma2", "gemma3_text")


def unsupported(model: Any) -> str | None:
    """Why the fast path cannot run `model`, or None when it can."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in FAMILIES:
        return f"the fast path knows {', '.join(FAMILIES)} models, not {kind}"
    if getattr(getattr(model, "model", None), "rotary_emb", None) is None:
        return "the model has no rotary embedding module"
    stack = stack_of(model)
    if stack is not None:
        read = {id(m) for block in model.model.layers for part in (block.self_attn, block.mlp)
                for m in part.children()}
        if any(key not in read for key in stack.by_module):
            return "a LoRA adapter changes a layer the fast path reads whole (it adapts the layers' projections)"
    return None


@dataclass(frozen=True)
class Projection:
    """One matmul: a float weight (with bias), or a quantized layer from lmpipe.models.quantize."""

    weight: Any
    bias: Any = None
    quantized: Any = None  # a QuantizedLinear (or one part of a fused one) that computes it
    parts: tuple[Projection, ...] = ()  # float projections run one by one, outputs side by side
    lora: Lora | None = None  # LoRA adapters' updates beside it (lmpipe.models.adapters), added to its output

    def __call__(self, x, slots=None):
        """`slots`: each row's adapter slot (a [B] tensor), one for all rows (an int), or None: none."""
        import torch.nn.functional as F

        if self.quantized is not None:
            out = self.quantized.forward(x)  # not its forward hooks: the adapters' updates are added here
        else:
            out = F.linear(x, self.weight, self.bias)
        if self.lora is not None and slots is not None:
            out = out + self.lora(x, slots)
        return out

    def split(self, x, sizes: list[int], slots=None) -> list[Any]:
        """The outputs of the projections this one stands for, one tensor each."""
        if self.parts:  # separate matmuls give separate, contiguous outputs: no copy to join them
            return [part(x, slots) for part in self.parts]
        return list(self(x, slots).split(sizes, dim=-1))


def fuse(linears: list[Any], loras: dict[int, Lora] | None = None) -> Projection:
    """One projection for several linears that read the same input: one matmul where exact.

    Quantized layers were fused when they were packed (lmpipe.models.quantized_layers.install): the parts of
    one fused layer, in order, are that layer. Packed buffers are never joined here. `loras`: the
    LoRA updates of the model's layers, by id(module) (lmpipe.models.adapters.LoraStack.by_module).
    """
    from .quantized_layers import QuantizedLinear, QuantizedPart

    loras = loras or {}

    if len(linears) == 1:
        only = linears[0]
        if isinstance(only, (QuantizedLinear, QuantizedPart)):
            return Projection(None, None, only, lora=loras.get(id(only)))
        return Projection(only.weight, only.bias, lora=loras.get(id(only)))
    fused = {id(m.fused) for m in linears if isinstance(m, QuantizedPart)}
    if len(fused) == 1 and all(isinstance(m, QuantizedPart) for m in linears):
        whole = linears[0].fused
        if linears[0].start == 0 and linears[-1].end == whole.out_features \
                and all(a.end == b.start for a, b in pairwise(linears)):
            lora = Lora.joined([loras.get(id(m)) for m in linears], [m.end - m.start for m in linears])
            return Projection(None, None, whole, lora=lora)
    # float weights stay apart: one fused matmul over one row of input rounds differently
    # from three (measured), and float32 output must stay token-identical to transformers'.
    return Projection(None, None, None, tuple(fuse([m], loras) for m in linears))


@dataclass(frozen=True)
class Norm:
    """An RMSNorm as transformers computes it, operation for operation, so the numbers match:
    Llama's casts back before the weight; Gemma's multiplies by (1 + w) in float32, then casts."""

    weight: Any  # Gemma's: 1 + w, in float32
    eps: float
    gemma: bool = False

    def __call__(self, x):
        import torch

        dtype = x.dtype
        h = x.to(torch.float32)
        variance = h.pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(variance + self.eps)
        return (h * self.weight).to(dtype) if self.gemma else self.weight * h.to(dtype)


def norm(module: Any) -> Norm | None:
    """The fast path's Norm for one of the model's RMSNorm modules (None for none)."""
    if module is None:
        return None
    eps = getattr(module, "variance_epsilon", None) or module.eps
    if type(module).__name__.startswith("Gemma"):
        return Norm(1.0 + module.weight.float(), eps, gemma=True)
    return Norm(module.weight, eps)


@dataclass(frozen=True)
class Layer:
    qkv: Projection
    o: Projection
    gate_up: Projection
    down: Projection
    norm_in: Norm
    norm_post: Norm  # Llama: before the MLP; Gemma: on the attention's output (a "sandwich")
    scale: float  # of q·k: head_dim ** -0.5, or the family's own (Gemma's query_pre_attn_scalar, Granite's)
    rope: str | None = "rope"  # which of the model's cos/sin (Gemma 3's local and global); None: SmolLM3's NoPE layers
    window: bool = False  # a sliding-window layer: keys within the model's window only
    softcap: float | None = None  # Gemma 2 soft-caps attention scores
    q_norm: Norm | None = None  # Qwen3 and Gemma 3 normalise each head's q and k
    k_norm: Norm | None = None
    norm_mlp_in: Norm | None = None  # Gemma: the MLP's own norms, before and after
    norm_mlp_out: Norm | None = None
    residual: float = 1.0  # Granite scales each block's output before adding it


def rotate(x, cos, sin):
    """transformers' rotary embedding (rotate_half), applied with the model's own cos and sin;
    Phi-3's partial rotary turns the first dimensions only, as transformers' does."""
    import torch

    dim = cos.shape[-1]
    if dim < x.shape[-1]:
        return torch.cat([rotate(x[..., :dim], cos, sin), x[..., dim:]], dim=-1)
    half = dim // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _layer(block: Any, config: Any, rope: str, head_dim: int, loras: dict[int, Lora]) -> tuple[Layer, int | None]:
    """One decoder block's pieces, read from its modules, and its sliding window (None: none)."""
    attn, mlp = block.self_attn, block.mlp
    # Mistral and Phi-3 name one window for every layer; the others set it per layer type.
    window = attn.sliding_window if hasattr(attn, "sliding_window") else getattr(config, "sliding_window", None)
    if hasattr(attn, "qkv_proj"):  # Phi-3's checkpoint holds q/k/v and gate/up as one linear each
        qkv, gate_up = fuse([attn.qkv_proj], loras), fuse([mlp.gate_up_proj], loras)
    else:  # float32 weights are fused only where that leaves every output number unchanged.
        qkv = fuse([attn.q_proj, attn.k_proj, attn.v_proj], loras)
        gate_up = fuse([mlp.gate_proj, mlp.up_proj], loras)
    norm_in, norm_post = norm(block.input_layernorm), norm(block.post_attention_layernorm)
    assert norm_in is not None and norm_post is not None  # every decoder block has both
    return Layer(
        qkv=qkv, o=fuse([attn.o_proj], loras), gate_up=gate_up, down=fuse([mlp.down_proj], loras),
        norm_in=norm_in, norm_post=norm_post,
        scale=getattr(attn, "scaling", None) or head_dim ** -0.5,
        rope=rope if getattr(attn, "use_rope", True) else None,
        window=window is not None, softcap=getattr(attn, "attn_logit_softcapping", None),
        q_norm=norm(getattr(attn, "q_norm", None)), k_norm=norm(getattr(attn, "k_norm", None)),
        norm_mlp_in=norm(getattr(block, "pre_feedforward_layernorm", None)),
        norm_mlp_out=norm(getattr(block, "post_feedforward_layernorm", None)),
        residual=getattr(block, "residual_multiplier", 1.0),
    ), window


class FastModel:
    """A decoder's weights arranged for the fast path, sharing the model's tensors; each family's
    pieces read from its own modules, so what transformers computes is what runs here."""

    def __init__(self, model: Any):
        config = model.config
        inner = model.model
        # A quantized tied model's embedding is the int8 head's values and scales (QuantizedEmbedding).
        embedding = inner.embed_tokens
        self.embed = getattr(embedding, "values", None)
        self.embed_scales = getattr(embedding, "scales", None)
        # An untied GGUF model's embedding kept as the file's blocks (PortableEmbedding): looked up by its own forward.
        self.embed_rows = embedding if hasattr(embedding, "qvalues") else None
        if self.embed is None:
            self.embed = embedding.qvalues if self.embed_rows is not None else embedding.weight
        # Gemma scales the embedding by sqrt(hidden) (a buffer), Granite by its embedding_multiplier.
        self.embed_scale = getattr(embedding, "embed_scale", None)
        if self.embed_scale is None:
            self.embed_scale = getattr(inner, "embedding_multiplier", None)
        self.rotary = inner.rotary_emb
        # Gemma 3 turns local (sliding) layers with another base than global ones: cos/sin per layer type.
        self.per_type_rope = "layer_type" in inspect.signature(self.rotary.forward).parameters
        self.norm = norm(inner.norm)
        self.head = fuse([model.lm_head])
        self.logit_softcap = getattr(config, "final_logit_softcapping", None)  # Gemma
        self.logit_scale = getattr(config, "logits_scaling", None)  # Granite divides the logits by it
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.dtype = inner.norm.weight.dtype
        self.device = self.embed.device
        # transformers' eager attention where the model runs it (Gemma 2: SDPA cannot soft-cap)
        self.eager = getattr(config, "_attn_implementation", None) == "eager"
        kinds = getattr(config, "layer_types", None) or ["full_attention"] * len(inner.layers)
        # LoRA adapters beside the weights (lmpipe.models.adapters): rows that name none run `default_slot`'s.
        stack = stack_of(model)
        loras = stack.by_module if stack is not None else {}
        self.default_slot = stack.default if stack is not None else 0
        self.slot_count = stack.count if stack is not None else 0
        built = [_layer(block, config, kind if self.per_type_rope else "rope", self.head_dim, loras)
                 for block, kind in zip(inner.layers, kinds, strict=True)]
        self.layers = [layer for layer, _ in built]
        # One window for every sliding layer (each family has one); None: no layer slides.
        self.window = max((w for _, w in built if w is not None), default=None)
        self.ropes = {layer.rope for layer in self.layers if layer.rope is not None}
        first = inner.layers[0].mlp
        self.intermediate = first.gate_up_proj.out_features // 2 if hasattr(first, "gate_up_proj") \
            else first.gate_proj.out_features
        self.act = getattr(first, "act_fn", None) or first.activation_fn  # the model's own (SiLU, Gemma's tanh GELU)
        self.quantized = any(layer.o.quantized is not None for layer in self.layers)
        self.q_size = self.heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim
        # lmpipe's attention kernel computes plain attention: Llama's scale, no soft-cap, no window
        self.plain = all(layer.scale == self.head_dim ** -0.5 and layer.softcap is None for layer in self.layers) \
            and self.window is None

    def rope(self, x, positions) -> dict[str, Any]:
        """cos and sin [B, 1, T, rotary dims] for each kind of layer."""
        out = {}
        for kind in self.ropes:
            cos, sin = self.rotary(x, positions, kind) if self.per_type_rope else self.rotary(x, positions)
            out[kind] = cos[:, None], sin[:, None]
        return out

    def embedding(self, ids):
        import torch

        if self.embed_rows is not None:
            x = self.embed_rows(ids)
        elif self.embed_scales is None:
            x = torch.nn.functional.embedding(ids, self.embed)
        else:
            x = lookup(ids, self.embed, self.embed_scales, self.dtype)
        if self.embed_scale is None:
            return x
        scale = self.embed_scale
        return x * (scale.to(x.dtype) if isinstance(scale, torch.Tensor) else scale)

    def logits(self, x):
        logits = self.head(self.norm(x))
        if self.logit_scale is not None:
            logits = logits / self.logit_scale
        if self.logit_softcap is not None:
            logits = (logits / self.logit_softcap).tanh() * self.logit_softcap
        return logits.float()

    def cache(self, rows: int, width: int) -> KVCache:
        return KVCache(self, rows, width)

    def forward(self, ids, positions, cache: KVCache, rows: slice, columns, attend, every: bool = False,
                slots=None) -> Any:
        """Run `ids` [B, T] at `positions` [B, T]; write K/V into cache rows `rows` at `columns`.

        `columns`: a slice (prefill: the same columns for every row) or a [B] tensor (one
        column per row, a decode step). `attend(q, k, v, layer)` does the attention over the cache.
        `slots`: each row's LoRA adapter slot, a [B] tensor of indices, or an int for every row
        (None: the model's default_slot; 0: none).
        Returns the last position's logits, float32 [B, vocab]; with `every`, all positions' [B, T, vocab].
        """
        b, t = ids.shape
        if slots is None:
            slots = self.default_slot
        if isinstance(slots, int) and slots == 0:
            slots = None  # no adapter: the projections alone, nothing more computed
        elif slots is not None and not isinstance(slots, int):
            slots = Lora.mask(slots, self.slot_count)
        x = self.embedding(ids)
        ropes = self.rope(x, positions)
        for i, layer in enumerate(self.layers):
            h = layer.norm_in(x)
            q, k, v = layer.qkv.split(h, [self.q_size, self.kv_size, self.kv_size], slots)
            q, k = q.view(b, t, self.heads, self.head_dim), k.view(b, t, self.kv_heads, self.head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:  # a family has both or neither
                q, k = layer.q_norm(q), layer.k_norm(k)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
            if layer.rope is not None:
                cos, sin = ropes[layer.rope]
                q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            keys, values = cache.write(i, rows, columns, k, v)
            out = layer.o(attend(q, keys, values, layer).transpose(1, 2).reshape(b, t, self.q_size), slots)
            if layer.norm_mlp_in is not None:  # Gemma: norms after attention, and around the MLP
                x = x + layer.norm_post(out)
                h = layer.norm_mlp_in(x)
            else:
                x = x + (out * layer.residual if layer.residual != 1.0 else out)
                h = layer.norm_post(x)
            gate, up = layer.gate_up.split(h, [self.intermediate, self.intermediate], slots)
            out = layer.down(self.act(gate) * up, slots)
            if layer.norm_mlp_out is not None:
                out = layer.norm_mlp_out(out)
            x = x + (out * layer.residual if layer.residual != 1.0 else out)
        return self.logits(x if every else x[:, -1, :])


class KVCache:
    """Keys and values for `rows` sequences, allocated once; each row fills its own columns.

    `valid[r, c]` says column c of row r holds a real token (left padding never does);
    `fill[r]` is the next column row r writes; `position[r]` its next position id.
    """

    def __init__(self, fast: FastModel, rows: int, width: int):
        import torch

        shape = (rows, fast.kv_heads, width, fast.head_dim)
        self.keys = [torch.zeros(shape, dtype=fast.dtype, device=fast.device) for _ in fast.layers]
        self.values = [torch.zeros(shape, dtype=fast.dtype, device=fast.device) for _ in fast.layers]
        self.valid = torch.zeros((rows, width), dtype=torch.bool, device=fast.device)
        self.fill = torch.zeros(rows, dtype=torch.long, device=fast.device)
        self.position = torch.zeros(rows, dtype=torch.long, device=fast.device)
        self.rows, self.width = rows, width
        self.span = 0  # columns in use by any row: attention reads no further

    def write(self, layer: int, rows: slice, columns, k, v):
        keys, values = self.keys[layer], self.values[layer]
        if isinstance(columns, slice):  # a prompt: it attends to what is before it too (a cached prefix)
            keys[rows, :, columns] = k
            values[rows, :, columns] = v
            return keys[rows, :, : columns.stop], values[rows, :, : columns.stop]
        import torch

        index = torch.arange(k.shape[0], device=k.device) + (rows.start or 0)
        keys[index, :, columns] = k[:, :, 0]
        values[index, :, columns] = v[:, :, 0]
        return keys[rows, :, : self.span], values[rows, :, : self.span]

    def grown(self, width: int) -> KVCache:
        """A wider cache holding this one's rows (the server's rows outgrew it)."""
        import torch

        wider = KVCache.__new__(KVCache)
        pad = width - self.width

        def widen(t):
            return torch.cat([t, t.new_zeros((*t.shape[:2], pad, t.shape[3]))], dim=2)

        wider.keys = [widen(t) for t in self.keys]
        wider.values = [widen(t) for t in self.values]
        wider.valid = torch.cat([self.valid, self.valid.new_zeros((self.rows, pad))], dim=1)
        wider.fill, wider.position = self.fill.clone(), self.position.clone()
        wider.rows, wider.width, wider.span = self.rows, width, self.span
        return wider

    def prefix(self, row: int, length: int) -> tuple[list[Any], list[Any]]:
        """Copies of row `row`'s first `length` columns of keys and values, layer by layer."""
        return ([k[row, :, :length].clone() for k in self.keys], [v[row, :, :length].clone() for v in self.values])

    def load_prefix(self, row: int, keys: list[Any], values: list[Any], length: int) -> None:
        """Start row `row` with a stored prefix's first `length` columns."""
        for cache, stored in ((self.keys, keys), (self.values, values)):
            for t, part in zip(cache, stored, strict=True):
                t[row, :, :length] = part[:, :length]
        self.valid[row] = False
        self.valid[row, :length] = True
        self.fill[row] = length
        self.position[row] = length

    def truncate(self, row: int, length: int) -> None:
        """Forget row `row`'s columns from `length` on (rejected speculative tokens)."""
        self.valid[row, length:] = False
        self.fill[row] = length
        self.position[row] = length

    def move(self, source: int, target: int) -> None:
        """Copy row `source` into row `target` (the server packs its live rows to the front)."""
        for tensors in (self.keys, self.values):
            for t in tensors:
                t[target] = t[source]
        for t in (self.valid, self.fill, self.position):
            t[target] = t[source]


def _attention(fast: FastModel, mask, windowed=None) -> Callable:
    """Attention as transformers computes it, choice for choice, so the numbers match.

    `mask` [B, 1, T, keys] (None: causal, no padding); `windowed` the same for sliding-window
    layers (None: as `mask`). SDPA with no mask: its own GQA and causal flag. A mask and one
    query per row: the query heads packed onto their key/value head. A mask and a prompt:
    key/value heads repeated. A model transformers runs eagerly (Gemma 2) runs eagerly here.
    """
    import torch.nn.functional as F

    groups = fast.heads // fast.kv_heads

    def attend(q, k, v, layer: Layer):
        b, heads, t, dim = q.shape
        m = windowed if layer.window and windowed is not None else mask
        if fast.eager:
            return _eager_attention(q, k, v, m, groups, layer)
        if m is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=groups > 1, scale=layer.scale)
        if groups == 1:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=layer.scale)
        if t == 1:
            packed = q.reshape(b, heads // groups, groups, dim)
            out = F.scaled_dot_product_attention(packed, k, v, attn_mask=m, scale=layer.scale)
            return out.reshape(b, heads, 1, dim)
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=layer.scale)

    return attend


def _eager_attention(q, k, v, mask, groups: int, layer: Layer):
    """transformers' eager_attention_forward: scores, Gemma 2's soft-cap, the mask, a float32 softmax."""
    import torch

    t, width = q.shape[2], k.shape[2]
    if mask is None:  # no padding: causal over the columns before and at each query
        mask = torch.ones((t, width), dtype=torch.bool, device=q.device).tril(diagonal=width - t)
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * layer.scale
    if layer.softcap is not None:
        scores = torch.tanh(scores / layer.softcap) * layer.softcap
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.matmul(scores.softmax(-1, dtype=torch.float32).to(q.dtype), v)


def _near(fast: FastModel, queries, keys: int):
    """[len(queries), keys]: which key columns lie within the sliding window of each query column
    (transformers' sliding_window_overlay: key > query - window; a row's columns and positions
    differ by its left padding alone, so columns measure the same distances)."""
    import torch

    columns = torch.arange(keys, device=queries.device)
    return columns[None, :] > queries[:, None] - fast.window


# A long prompt's tokens per forward pass, as llama.cpp's default micro-batch (n_ubatch 512).
# One pass holds every token's activations at once: passes of this size bound a long prompt's
# peak memory, and cost no speed (int8's prefill gains; docs/benchmarks.md). Shorter prompts: one pass.
PREFILL_CHUNK = 512


def prefill(fast: FastModel, cache: KVCache, rows: slice, ids: Tensor, mask: Tensor, start: int = 0,
            every: bool = False, slots: Tensor | int | None = None) -> Tensor:
    """Fill cache `rows` with left-padded prompts `ids` [B, T] (mask 1 where a token is real).

    `start`: the row already holds the prompt's first `start` tokens (a cached prefix, or the
    tokens before a speculative draft; one row, no padding): only the rest is computed,
    attending to those too. Returns the last position's logits [B, vocab]; with `every`, every
    position's [B, T, vocab]. `slots`: the rows' LoRA adapter slots (FastModel.forward).

    One row without padding longer than PREFILL_CHUNK goes in passes of that many tokens, each
    attending to the ones before it in the cache (as a cached prefix is); its logits agree with
    one pass's to float rounding. A left-padded batch is one pass.
    """
    import torch

    t = ids.shape[1]
    if t <= PREFILL_CHUNK or ids.shape[0] != 1 or not bool(mask.bool().all()):
        return _prefill_pass(fast, cache, rows, ids, mask, start, every, slots)
    passes = [_prefill_pass(fast, cache, rows, ids[:, s:s + PREFILL_CHUNK], mask[:, s:s + PREFILL_CHUNK], start + s,
                            every, slots)
              for s in range(0, t, PREFILL_CHUNK)]
    return torch.cat(passes, dim=1) if every else passes[-1]


def _prefill_pass(fast: FastModel, cache: KVCache, rows: slice, ids, mask, start: int = 0, every: bool = False,
                  slots=None):
    """One forward pass of prefill (see prefill)."""
    import torch

    t = ids.shape[1]
    end = start + t
    attn_mask = None
    if start:
        positions = torch.arange(start, end, device=ids.device)[None]
        attn_mask = torch.ones((t, end), dtype=torch.bool, device=ids.device).tril(diagonal=start)[None, None]
    else:
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
    if not start and bool((mask == 0).any()):
        causal = torch.ones((t, t), dtype=torch.bool, device=ids.device).tril()
        # A padding query sees itself, so its (unused) output stays finite: NaN keys would poison real rows.
        attn_mask = (causal[None] & mask.bool()[:, None, :]) | torch.eye(t, dtype=torch.bool, device=ids.device)
        attn_mask = attn_mask[:, None]
    windowed = None
    if fast.window is not None and end > fast.window:
        causal = attn_mask if attn_mask is not None else \
            torch.ones((t, end), dtype=torch.bool, device=ids.device).tril(diagonal=start)[None, None]
        windowed = causal & _near(fast, torch.arange(start, end, device=ids.device), end)
    if not start:
        cache.valid[rows] = False
    cache.valid[rows, start:end] = mask.bool()
    cache.fill[rows] = end
    cache.position[rows] = start + mask.long().sum(-1)
    with torch.no_grad():
        attend = _attention(fast, attn_mask, windowed)
        return fast.forward(ids, positions, cache, rows, slice(start, end), attend, every, slots)


def step(fast: FastModel, cache: KVCache, rows: slice, chosen: Tensor, compiled: bool = False,
         slots: Tensor | int | None = None) -> Tensor:
    """One new token [B] for each of cache `rows`, each at its own column; returns logits [B, vocab].
    `slots`: the rows' LoRA adapter slots (FastModel.forward).

    `compiled`: run the step torch.compile made of it. Its shapes must not change from step to
    step, so it attends over the cache's whole width (masked) rather than the columns in use.
    """
    import torch

    columns = cache.fill[rows].clone()
    cache.valid[torch.arange(rows.start or 0, rows.stop, device=columns.device), columns] = True
    positions = cache.position[rows][:, None].clone()
    # chosen here, outside the compiled step: asking whether the kernels run would break its graph
    kernel = fast.dtype == torch.float32 and fast.plain and vnni_kernels.available()
    if compiled:
        cache.span = cache.width
        valid = cache.valid[rows]
        windowed = None if fast.window is None else (valid & _near(fast, columns, cache.span))[:, None, None, :]
        logits = _compiled_fast_step()(fast, cache, rows, chosen, positions, columns, valid[:, None, None, :],
                                       windowed, _kernel_attention if kernel else _whole_cache_attention, slots)
    else:
        cache.span = int(columns.max()) + 1
        valid = cache.valid[rows, : cache.span]
        if kernel and fast.quantized:
            # A quantized model promises no bit-identity with transformers: lmpipe's attention
            # kernel, not SDPA, which reads only the columns in use (lm-serve's eager batches).
            logits = _step(fast, cache, rows, chosen, positions, columns, valid[:, None, None, :], None,
                           _kernel_attention, slots)
        else:
            mask = None if bool(valid.all()) else valid[:, None, None, :]
            windowed = None
            if fast.window is not None and cache.span > fast.window:
                windowed = (valid & _near(fast, columns, cache.span))[:, None, None, :]
            logits = _step(fast, cache, rows, chosen, positions, columns, mask, windowed, slots=slots)
    cache.fill[rows] += 1
    cache.position[rows] += 1
    return logits


def _step(fast: FastModel, cache: KVCache, rows: slice, chosen, positions, columns, mask, windowed, attention=None,
          slots=None):
    import torch

    with torch.no_grad():
        return fast.forward(chosen[:, None], positions, cache, rows, columns,
                            (attention or _attention)(fast, mask, windowed), slots=slots)


def _kernel_attention(fast: FastModel, mask, windowed=None) -> Callable:
    """The compiled step's float32 attention where lmpipe's kernels run (lmpipe.models.kernels.vnni):
    one call of theirs per layer, which reads only the unmasked columns of the cache. Plain
    attention only (FastModel.plain): Llama's scale, no soft-cap, no window."""

    def attend(q, k, v, layer: Layer):
        return vnni_kernels.attend_one(q, k, v, mask)

    return attend


def _whole_cache_attention(fast: FastModel, mask, windowed=None) -> Callable:
    """The compiled step's attention of one query per row over the cache's whole masked width:
    two matmuls and a masked softmax, which inductor fuses. SDPA's CPU kernel costs more per
    call than a single query's arithmetic, and it is called once a layer for every token."""
    import torch

    groups = fast.heads // fast.kv_heads

    def attend(q, k, v, layer: Layer):
        b, heads, _, dim = q.shape
        packed = q.reshape(b, heads // groups, groups, dim)  # each key/value head's queries together
        scores = (packed @ k.transpose(-1, -2)) * layer.scale
        if layer.softcap is not None:
            scores = torch.tanh(scores / layer.softcap) * layer.softcap
        m = windowed if layer.window and windowed is not None else mask
        weights = scores.float().masked_fill(~m, float("-inf")).softmax(-1).to(v.dtype)
        return (weights @ v).reshape(b, heads, 1, dim)

    return attend


def _step_guards(entries: list[Any]) -> list[bool]:
    """Which of the compiled step's guards dynamo checks before every step (torch.compile's
    `guard_filter_fn`).

    Dynamo guards everything the step read: on a 30-layer model about 3,500 checks of the
    FastModel's layers (their types, module hook dicts, each weight's tensor metadata), a
    sizeable share of a small model's token. A FastModel's arrangement never changes once
    built, and the step takes its weights as inputs read at each call, never as constants. So
    of the guards on `fast` only those on its values stay: sizes, counts, eps, quantization
    modes (constant, equality and length checks) and the embedding's shape. A model differing
    in any of them compiles anew; one equal in all of them is the same computation on other
    weights. Guards on the cache, the step's own inputs and torch's global state all stay.
    """
    kept = ("CONSTANT_MATCH", "EQUALS_MATCH", "SEQUENCE_LENGTH")
    return [not (entry.name == "fast" or entry.name.startswith(("fast.", "fast["))) or entry.guard_type in kept
            or entry.name == "fast.embed" for entry in entries]


@cache_function
def _compiled_fast_step():
    import torch

    # size_asserts off: inductor's wrapper otherwise checks every input's sizes and strides at
    # each call, hundreds of checks a token, all of them weights whose shapes the kept guards on
    # the model's sizes already fix.
    return torch.compile(_step, dynamic=False, options={"guard_filter_fn": _step_guards, "size_asserts": False})


WIDTH_STEP = 256


def rounded_width(width: int) -> int:
    """Cache widths in steps of 256: a compiled step compiles once per width, a growing cache grows seldom."""
    return -(-width // WIDTH_STEP) * WIDTH_STEP


class FastDecoder:
    """The generation loop's `prefill`/`step` over the fast path, for one left-padded batch."""

    def __init__(self, fast: FastModel, mask, max_new_tokens: int, compiled: bool = False, slots=None):
        self.fast, self.mask, self.compiled, self.slots = fast, mask, compiled, slots
        rows, width = mask.shape
        width += max_new_tokens
        self.cache = fast.cache(rows, rounded_width(width) if compiled else width)
        self.rows = slice(0, rows)

    def prefill(self, ids, every: bool = False):
        return prefill(self.fast, self.cache, self.rows, ids, self.mask, every=every, slots=self.slots)

    def step(self, chosen):
        return step(self.fast, self.cache, self.rows, chosen, self.compiled, self.slots)


def fast_model(model: Any) -> FastModel:
    """The model's fast-path arrangement, built once per loaded model and kept with it."""
    built = getattr(model, "_lmpipe_fast", None)
    if built is None:
        built = FastModel(model)
        model._lmpipe_fast = built
    return built
