"""The quantized model's modules (QuantizedLinear, QuantizedPart, QuantizedEmbedding), and putting
them in a model's place of its linears (`install`, `quantize`).

They import torch, so lmpipe.models.quantize (modes, QuantizedWeight and its arithmetic) stays
importable without it. Each layer decides at load which product computes it, a callable;
what is left to decide per call is the range of rows only, where kernels differ by row count
(lmpipe.models.kernels.choice measures that per CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from .kernels import choice as kernel_choice
from .kernels import vnni as vnni_kernels
from .quantize import (
    FUSED_GROUPS,
    INT4_MODES,
    KERNEL_MAX_ROWS,
    QuantizedWeight,
    check_kernel,
    check_mode,
    kernel_product,
    layer_modes,
    lookup,
    pack,
    product,
    quantizable,
    quantize_weight,
    refined_top,
    split_int8_product,
    tied_head,
)

Product = Callable[[torch.Tensor], torch.Tensor]  # x [M, K] -> [M, N]


class QuantizedLinear(nn.Module):
    """A Linear whose weight is int8 (per channel) or int4 (per group), packed for this CPU.

    The packed buffers are not saved with the module (they are not portable): the quantized
    copy on disk holds the QuantizedWeight it was packed from, and lmpipe.models.packed_cache
    lmpipe's own layout of them.
    """

    packed: torch.Tensor  # buffers, registered in __init__
    packed_scales: torch.Tensor | None  # None for int4 on lmpipe's kernels: their blocks hold the scales
    split_scales: torch.Tensor | None

    def __init__(self, weight: QuantizedWeight, bias: Any = None, bfloat16_rows: bool = False):
        """`bfloat16_rows`: an int8 layer of an int4 model (its output head): on lmpipe's kernels it
        takes their int8 one like the int4 layers, elsewhere the bfloat16 kernel for few rows (see
        lmpipe.models.quantized_layers.install)."""
        super().__init__()
        self.mode = weight.mode
        self.bfloat16_rows = bfloat16_rows
        self.in_features, self.out_features = weight.in_features, weight.out_features
        # int4, and an int4 model's int8 head, go through lmpipe's own kernels where the CPU has
        # them (lmpipe.models.kernels.vnni). int8 models keep the split product where oneDNN has
        # VNNI: at 16 rows and more its int8 GEMM beats the kernel, and one layout is kept, not
        # two. Without VNNI (lmpipe's AVX2 kernels) oneDNN's int8 sums are wrong, and torch's
        # bfloat16 kernel is emulated: int8 models take lmpipe's kernel too.
        self.vnni = vnni_kernels.available() and (weight.mode in INT4_MODES or (
            (bfloat16_rows or vnni_kernels.selected == "avx2")
            and vnni_kernels.int8_fits(self.out_features, self.in_features)))
        self.isa = vnni_kernels.selected if self.vnni else None  # AMX, AVX-512 VNNI or AVX2
        packed, scales = pack(weight, self.vnni)
        self.split = check_kernel(weight, packed, scales, self.vnni)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("packed_scales", scales, persistent=False)
        # The split product's scales: the same bfloat16 values, exact in float32, its own dtype.
        self.register_buffer("split_scales", scales.float() if self.split else None, persistent=False)
        self.bias = bias
        self._memo: tuple[torch.Tensor, int, torch.Tensor] | None = None
        self.parts = 2
        self.use_kernels(None)

    @classmethod
    def restored(cls, mode: str, in_features: int, out_features: int, packed: torch.Tensor,
                 scales: torch.Tensor | None, bfloat16_rows: bool) -> QuantizedLinear:
        """A layer of buffers packed for lmpipe's kernels before (lmpipe.models.packed_cache), taken
        as they are: no packing, and the caller checks them against the file's values."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.mode, self.bfloat16_rows = mode, bfloat16_rows
        self.in_features, self.out_features = in_features, out_features
        self.vnni, self.isa, self.split = True, vnni_kernels.selected, False
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("packed_scales", scales, persistent=False)
        self.register_buffer("split_scales", None, persistent=False)
        self.bias = None
        self._memo = None
        self.parts = 2
        self.use_kernels(None)
        return self

    def onto_lmpipe_kernel(self) -> None:
        """An int8 layer on torch's kernels (oneDNN's exact split product, or the bfloat16 kernel) moved
        onto lmpipe's int8 kernel, packed and checked as a layer made for it is: --activations int8,
        which torch's products do not take. Its plain values and bfloat16 scales are the portable
        weight's, as torch's packing keeps them."""
        weight = QuantizedWeight("int8", self.packed, self.packed_scales)
        self.packed, self.packed_scales = pack(weight, vnni=True)
        self.split = check_kernel(weight, self.packed, self.packed_scales, vnni=True)
        self.split_scales = None
        self.vnni, self.isa = True, vnni_kernels.selected
        self.use_kernels(None)

    def use_kernels(self, kernels: dict[str, str] | None, parts: int = 2) -> None:
        """Compute with `kernels` (range of rows -> kernel name, lmpipe.models.kernels.choice) from
        now on; None: the one instruction set selected for this CPU at every row count. `parts`:
        lmpipe's kernels' activations, 2 int8 parts (float32's accuracy) or 1 (--activations int8)."""
        self.kernels, self.parts = kernels, parts
        self.product = self._chosen_product()

    def _chosen_product(self) -> Product:
        if self.vnni:
            if not self.kernels:
                return self._on_lmpipe_kernel(self.isa)
            by_range = {name: self._float_product if kernel == kernel_choice.FLOAT
                        else self._on_lmpipe_kernel(kernel_choice.ISAS[kernel])
                        for name, kernel in self.kernels.items()}
            if len(set(self.kernels.values())) == 1:  # one kernel for every row count: no switch per call
                return next(iter(by_range.values()))
            return partial(self._by_rows, by_range)
        if self.split:
            return self._split_or_bfloat16_kernel
        if self.mode == "int8":
            return self._int8_without_exact_sums
        return self._bfloat16_kernel

    # Products are bound methods and partials of them, not closures: a copy of the module computes
    # with its own buffers.
    def _on_lmpipe_kernel(self, isa: str | None) -> Product:
        return partial(self._lmpipe_kernel, isa)

    def _lmpipe_kernel(self, isa: str | None, flat: torch.Tensor) -> torch.Tensor:
        return product(self.mode, flat, self.packed, self.packed_scales, self.out_features, isa, self.parts)

    @staticmethod
    def _by_rows(by_range: dict[str, Product], flat: torch.Tensor) -> torch.Tensor:
        return by_range[kernel_choice.row_range(flat.shape[0])](flat)

    def _float_product(self, flat: torch.Tensor) -> torch.Tensor:
        """No quantized kernel beat float32 at this many rows on this CPU: the dequantized weight's."""
        weight = kernel_choice.dequantized(self.mode, self.packed, self.packed_scales, self.out_features)
        return flat.float() @ weight.t()

    def _split_or_bfloat16_kernel(self, flat: torch.Tensor) -> torch.Tensor:
        if (self.bfloat16_rows or flat.dtype == torch.bfloat16) and flat.shape[0] <= KERNEL_MAX_ROWS:
            return self._bfloat16_kernel(flat)
        return split_int8_product(flat.float(), self.packed, self.split_scales)

    def _int8_without_exact_sums(self, flat: torch.Tensor) -> torch.Tensor:
        if flat.shape[0] > KERNEL_MAX_ROWS:  # many rows: a float matmul over the dequantized weight beats the kernel
            scales = self.packed_scales
            assert scales is not None  # int8 keeps its per-row scales beside the values
            return (flat @ self.packed.t().to(flat.dtype)) * scales.to(flat.dtype)
        return self._bfloat16_kernel(flat)

    def _bfloat16_kernel(self, flat: torch.Tensor) -> torch.Tensor:
        y = kernel_product(self.mode, flat, self.packed, self.packed_scales)
        if self.bfloat16_rows and self.mode == "int8" and flat.dtype != torch.bfloat16:
            y = refined_top(y, flat, self.packed, self.packed_scales)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.product(x.reshape(-1, x.shape[-1]))
        y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    def shared_forward(self, x: torch.Tensor) -> torch.Tensor:
        """forward(x), computed once for the parts that all read the same `x` (q, k and v)."""
        memo = self._memo
        if memo is not None and memo[0] is x and memo[1] == x._version:
            return memo[2]
        y = self(x)
        self._memo = (x, x._version, y)
        return y


class QuantizedPart(nn.Module):
    """One of the layers fused into `fused` (q_proj of q/k/v): its columns of the fused output.

    It holds no weights: fusing joined the portable values and packed them once, so the
    part's own would be a second copy. transformers' forward calls q, k and v on the same
    input one after another; the fused product is computed once for the three.
    """

    def __init__(self, fused: QuantizedLinear, start: int, end: int):
        super().__init__()
        self.fused = fused
        self.start, self.end = start, end
        self.mode, self.in_features, self.out_features = fused.mode, fused.in_features, end - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.shared_forward(x)[..., self.start:self.end]


class QuantizedEmbedding(nn.Module):
    """A tied model's input embedding, looked up from its int8 output head's values.

    A tied head and embedding are one matrix; once the head is int8, a float copy kept for
    the lookup alone is the largest tensor of a small model. Each row looked up is the head's
    row dequantized: what the quantized model's head computes with, so the two stay one matrix.
    """

    def __init__(self, head: QuantizedLinear, dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.dtype = dtype
        # The head's own buffers, not copies (an int8 pack is the plain values); not saved.
        self.register_buffer("values", head.packed, persistent=False)
        self.register_buffer("scales", head.packed_scales, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return lookup(ids, self.values, self.scales, self.dtype)


class PortableEmbedding(nn.Module):
    """An untied model's input embedding kept in QuantizedWeight's portable layout (a GGUF's Q4_K
    token_embd as q4k or int4, its Q6_K as int8): each row looked up is dequantized as the weight defines
    it. For a large vocabulary (Llama 3's 128k rows), a float32 copy would be the model's largest
    tensor."""

    def __init__(self, weight: QuantizedWeight, dtype: torch.dtype):
        super().__init__()
        self.mode, self.dtype = weight.mode, dtype
        self.num_embeddings, self.embedding_dim = weight.out_features, weight.in_features
        # QuantizedWeight.tensors' names, so a saved one is read back by QuantizedWeight.from_tensors
        self.register_buffer("qvalues", weight.values)
        self.register_buffer("qscales", weight.scales)
        self.register_buffer("qzeros", weight.zeros)  # None for int8: not a buffer then

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        weight = QuantizedWeight(self.mode, self.qvalues, self.qscales, self.qzeros)
        rows = weight.rows(ids.reshape(-1)).dequantized()
        return rows.to(self.dtype).reshape(*ids.shape, self.embedding_dim)


def install(model: Any, weights: dict[str, QuantizedWeight], biases: dict[str, Any], fuse: bool = True,
            share_embedding: bool = True) -> None:
    """Put packed layers in place of the model's linears named in `weights`, consuming it.

    With `fuse`, the layers of FUSED_GROUPS under one module (q/k/v, gate/up) are joined
    *before* packing into one QuantizedLinear, and each becomes a QuantizedPart of it. Each
    portable weight leaves `weights` as it is packed, so a caller holding nothing else keeps
    one layer's values beside the packed model at a time, not the whole model's.

    A model with int4 layers runs its int8 layers (the output head) on lmpipe's int8 kernel
    where its int4 ones run on lmpipe's (one pass over the weight, exact). Elsewhere the int4
    layers compute from bfloat16 activations, and the int8 ones take the bfloat16 kernel for
    few rows too, one pass over the weight instead of the split product's two, at the same
    perplexity (lm-bench --perplexity shows both). Their largest outputs are
    then made exact (refined_top), so the head's bfloat16 resolution never decides between
    two near-tied tokens.

    With `share_embedding`, a tied model's input embedding is then looked up from the int8
    head's values (QuantizedEmbedding) and its float copy let go.
    """
    shared = tied_head(model, weights) if share_embedding else None
    bfloat16_rows = any(w.mode in INT4_MODES for w in weights.values())
    if fuse:
        for owner_name, owner in list(model.named_modules()):
            for group in FUSED_GROUPS:
                names = [f"{owner_name}.{leaf}" if owner_name else leaf for leaf in group]
                found = [weights.get(n) for n in names]
                parts = [p for p in found if p is not None]
                if len(parts) != len(found) or len({(p.mode, p.in_features) for p in parts}) != 1:
                    continue
                for n in names:
                    del weights[n]
                bias = _joined_bias([biases.get(n) for n in names], parts)
                fused = QuantizedLinear(QuantizedWeight.join(parts), bias, bfloat16_rows)
                del parts, found
                start = 0
                for leaf in group:
                    size = getattr(owner, leaf).out_features
                    setattr(owner, leaf, QuantizedPart(fused, start, start + size))
                    start += size
    for name in list(weights):
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf,
                QuantizedLinear(weights.pop(name), biases.get(name), bfloat16_rows))
    if shared is not None:
        dtype = model.get_input_embeddings().weight.dtype
        model.set_input_embeddings(QuantizedEmbedding(model.get_submodule(shared), dtype))


def _joined_bias(biases: list[Any], parts: list[QuantizedWeight]) -> Any:
    if all(b is None for b in biases):
        return None
    return torch.nn.Parameter(torch.cat([
        b.detach() if b is not None else torch.zeros(p.out_features, dtype=torch.float32)
        for b, p in zip(biases, parts, strict=True)]), requires_grad=False)


def quantize(model: Any, mode: str, device: str = "cpu", fuse: bool = True, under: tuple[str, ...] = ()) -> int:
    """Replace the model's Linear layers (the output head included) in place; return how many.
    `under`: only those inside these submodules (a vision-language model's language model)."""
    check_mode(mode, device)
    linears = {
        name: module for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (not under or any(name == u or name.startswith(u + ".") for u in under))
    }
    modes = layer_modes(model, linears, mode)
    targets = {name: m for name, m in linears.items() if quantizable(m, modes[name])}
    weights = {name: quantize_weight(m.weight, modes[name]) for name, m in targets.items()}
    # A tied head's embedding is looked up from its int8 values (a language model's own; a
    # vision-language model's embedding also takes image features, and stays as it is).
    install(model, weights, {name: m.bias for name, m in targets.items()}, fuse, share_embedding=not under)
    return len(targets)
