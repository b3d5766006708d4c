"""Weight-only quantization of a model's linear layers: int8 per channel, int4 per group.

Decoding one token reads every weight once, so on a CPU single-stream speed is a matter of
bytes per token: int8 reads a quarter of float32, int4 an eighth.

- int8 keeps float32's accuracy. Each row of activations is split into two int8 parts (the
  row's values in steps of max/127, then what that leaves in steps 254 times finer) and both
  go through torch's exact int8 matmul (`torch._int_mm`, oneDNN's VNNI or AMX kernels), so a
  layer is within ~1e-4 of its dequantized float32 product; torch's `_weight_int8pack_mm`
  takes and returns bfloat16, which put int8 logits percents from the dequantized model's. A
  bfloat16 model's few-row products keep that kernel: bfloat16 is what they compute in.
- int4 uses lmpipe's own kernel where the CPU has AVX-512 VNNI or AVX2, and AMX's tiles for many
  rows where it has those (lmpipe.models.kernels.vnni): integer dot products over activations
  split as int8's are, within ~1e-5 of the dequantized weight's product, and faster; its int8
  output head then runs on lmpipe's int8 kernel. Elsewhere torch's `_weight_int4pack_mm_for_cpu`,
  as gpt-fast and torchao do. It is fast with bfloat16 activations and many times slower with
  float32 ones, so activations enter it as bfloat16 and leave as float32 again.

Two representations, kept strictly apart:
- `QuantizedWeight` is portable: plain int8 values, or int4 values two to a byte in row
  order, with their bfloat16 scales (and zeros). It is what the quantized copy on disk holds,
  and the only thing that is ever joined (q/k/v, gate/up) or saved.
- `QuantizedLinear` packs one for the CPU that runs, at load time. The int4 kernel's packed
  layout is private to torch and differs by CPU (blocks of 64 output rows with AVX-512, 32
  with AVX2), and the int8 kernel's AVX-512 path reads its operands with aligned loads. So
  packed buffers are made fresh (owned, 64-byte aligned, contiguous), never sliced, joined,
  saved or read from a file mapping, and each distinct shape is checked once against the
  dequantized weight before it is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .device import cpuinfo
from .kernels import choice as kernel_choice
from .kernels import vnni as vnni_kernels

MODES = ("int8", "int4")
# Modes of 4-bit values, two to a byte in int4's portable order: int4, and q4k and q4_0, a GGUF's
# Q4_K and Q4_0 tensors on their own scales (lmpipe.models.gguf_weights; never a --quantize choice)
INT4_MODES = ("int4", "q4k", "q4_0")
OWN_SCALES = vnni_kernels.OWN_SCALES  # a GGUF's own formats: only lmpipe's kernels take them
# x [M, K] times a weight packed for lmpipe's kernels: one dispatch on the mode, the kernels' own
product = vnni_kernels.product
Q4K_SUPER = 256  # q4k's columns per super-block: one float16 d and dmin per row
INT4_GROUP = 32
KERNEL_MAX_ROWS = 8  # bfloat16 int8 kernel: past this many rows the split int8 product is faster (measured)
ALIGN = 64  # bytes: the kernels' widest aligned load is 32; allocations give 64
CHECK_TOLERANCE = 0.03  # relative error of a kernel product against the dequantized weight (bf16 activations: ~0.5%)
EXACT_TOLERANCE = 1e-3  # the same for the split int8 product (measured: ~1e-4)
CHECK_ROWS = 1024  # output rows the load check compares at most (its first ones, and the last 64)
SLICE_WEIGHTS = 1 << 20  # weights checked at once: their float32 temporaries stay a few MiB
REFINED = 8  # an int4 model's head: its largest outputs per row, recomputed in float32

# Fused together before packing: layers that read the same input, outputs side by side.
FUSED_GROUPS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized weight in a portable layout: nothing in it depends on the CPU or on torch's kernels.

    int8: `values` int8 [N, K], `scales` bfloat16 [N]; weight ≈ values * scales[:, None].
    int4: `values` uint8 [N, K/2], column 2j in the low nibble of byte j and 2j+1 in the high
    one; `scales`, `zeros` bfloat16 [N, K/32]; weight ≈ (q - 8) * scale + zero per group of 32.
    q4k (a GGUF's Q4_K as it is): `values` as int4's; `scales` float16 [N, K/256, 2], each
    super-block's d and dmin; `zeros` uint8 [N, K/32, 2], each group's 6-bit scale sc and minimum
    m; weight = (d·sc)·q − dmin·m, the file's own values.
    q4_0 (a GGUF's Q4_0 as it is): `values` as int4's; `scales` float16 [N, K/32], each group's d;
    weight = d·(q − 8), the file's own values.
    """

    mode: str
    values: Any
    scales: Any
    zeros: Any = None

    @property
    def out_features(self) -> int:
        return int(self.values.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.values.shape[1]) * (2 if self.mode in INT4_MODES else 1)

    def int4_values(self, dtype: Any = None):
        """int4: the values one per column, [N, K], 0..15: int32 (torch's kernel takes that), or `dtype`."""
        import torch

        q = torch.stack([self.values & 0x0F, self.values >> 4], dim=-1).reshape(self.out_features, self.in_features)
        return q.to(dtype or torch.int32)

    def dequantized(self):
        """The float32 weight these values stand for, computed as the kernels compute it."""
        if self.mode == "int8":
            return self.values.float() * self.scales.float()[:, None]
        if self.mode == "q4k":  # the file's dequantizer's float32 products, in its order
            q = self.int4_values().float().reshape(self.out_features, -1, INT4_GROUP)
            groups_per_super = Q4K_SUPER // INT4_GROUP
            d, dmin = (self.scales[..., i].float().repeat_interleave(groups_per_super, dim=1) for i in (0, 1))
            scale, low = d * self.zeros[..., 0].float(), dmin * self.zeros[..., 1].float()
            return (scale[..., None] * q - low[..., None]).reshape(self.out_features, self.in_features)
        if self.mode == "q4_0":  # the file's dequantizer's float32 products
            q = self.int4_values().float().reshape(self.out_features, -1, INT4_GROUP)
            return ((q - 8) * self.scales.float()[..., None]).reshape(self.out_features, self.in_features)
        groups = self.scales.shape[1]
        q = self.int4_values().float().reshape(self.out_features, groups, -1)
        w = (q - 8) * self.scales.float()[..., None] + self.zeros.float()[..., None]
        return w.reshape(self.out_features, self.in_features)

    def rows(self, index: Any) -> QuantizedWeight:
        """The output rows `index` of this weight (plain values index freely; packed ones never do)."""
        return QuantizedWeight(self.mode, self.values[index], self.scales[index],
                               None if self.zeros is None else self.zeros[index])

    def tensors(self, prefix: str) -> dict[str, Any]:
        """The tensors to save, named under `prefix` (a module path)."""
        out = {f"{prefix}.qvalues": self.values, f"{prefix}.qscales": self.scales}
        if self.zeros is not None:
            out[f"{prefix}.qzeros"] = self.zeros
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any], prefix: str) -> QuantizedWeight:
        """The weight saved under `prefix`; its dtypes say its mode (int8 values; uint8 pairs with float16
        scales for q4k, and q4_0 which has no zeros, with bfloat16 ones for int4)."""
        import torch

        values, scales = tensors[f"{prefix}.qvalues"], tensors[f"{prefix}.qscales"]
        zeros = tensors.get(f"{prefix}.qzeros")
        mode = ("int8" if values.dtype == torch.int8 else "int4" if scales.dtype != torch.float16 else
                "q4_0" if zeros is None else "q4k")
        return cls(mode, values, scales, zeros)

    @classmethod
    def join(cls, parts: list[QuantizedWeight]) -> QuantizedWeight:
        """Several weights' rows stacked: one layer computing them all, outputs side by side."""
        import torch

        zeros = None if parts[0].zeros is None else torch.cat([p.zeros for p in parts])
        return cls(parts[0].mode, torch.cat([p.values for p in parts]), torch.cat([p.scales for p in parts]), zeros)


def int8_rows(w: Any) -> tuple[Any, Any]:
    """float32 numpy [N, K] as int8 symmetric per row: (int8 values [N, K], float32 scales [N]),
    value = round(w / scale), scale = max|row| / 127. numpy, one thread: torch's pool, woken for
    each slice of a load's many small tensors, stalls whenever the other cores are busy."""
    import numpy as np

    scales = np.maximum(np.abs(w).max(axis=1) / np.float32(127), np.float32(1e-10))
    q = np.rint(w / scales[:, None])  # to nearest even, as torch.round
    return np.clip(q, -128, 127, out=q).astype(np.int8), scales


def quantize_weight(weight: Any, mode: str) -> QuantizedWeight:
    """`weight` [N, K] quantized: int8 symmetric per output channel, int4 asymmetric per group of 32."""
    import torch

    w = weight.detach().float()
    if mode == "int8":
        values, scales = int8_rows(w.contiguous().numpy())
        return QuantizedWeight(mode, torch.from_numpy(values), torch.from_numpy(scales).to(torch.bfloat16))
    out_features, in_features = w.shape
    w = w.reshape(out_features, in_features // INT4_GROUP, INT4_GROUP)
    low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = torch.round((w - low) / scale).clamp(0, 15).to(torch.uint8).reshape(out_features, in_features)
    values = q[:, 0::2] | (q[:, 1::2] << 4)
    zero = low + scale * 8  # the kernel computes (q - 8) * scale + zero
    return QuantizedWeight(mode, values.contiguous(), scale[..., 0].to(torch.bfloat16),
                           zero[..., 0].to(torch.bfloat16))


def owned(tensor: Any) -> Any:
    """`tensor` in memory of its own: contiguous, not a view, aligned for the kernels' loads.

    A tensor read from a safetensors file maps the file at the tensor's offset (8-byte
    aligned at best), and a view starts wherever its base's slice does; the int8 kernel's
    AVX-512 path faults on such an address.
    """
    import torch

    if tensor.is_contiguous() and tensor.storage_offset() == 0 and tensor.data_ptr() % ALIGN == 0 \
            and tensor.untyped_storage().nbytes() == tensor.nbytes:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)


def pack(weight: QuantizedWeight, vnni: bool = False) -> tuple[Any, Any]:
    """The kernel operands for this CPU: fresh buffers, made from the portable values at load time.

    `vnni`: for lmpipe's own kernels (lmpipe.models.kernels.vnni): int4 as one buffer with its
    scales inside; int8 in blocks of 16 rows, with float32 scales.
    """
    import torch

    if vnni and weight.mode == "int4":  # the build's op writes the layout straight: no temporaries
        return vnni_kernels.int4_pack_pairs(weight.values, weight.scales, weight.zeros), None
    if weight.mode in OWN_SCALES:  # made only where lmpipe's kernels run (lmpipe.models.gguf_weights)
        if not vnni:
            raise ValueError(f"a {weight.mode} weight runs on lmpipe's kernels only")
        if weight.mode == "q4_0":
            return vnni_kernels.q4_0_pack(weight.values, weight.scales), None
        return vnni_kernels.q4k_pack(weight.values, weight.scales, weight.zeros), None
    if vnni:
        return vnni_kernels.int8_pack(weight.values), weight.scales.float()
    if weight.mode == "int8":
        return owned(weight.values), owned(weight.scales)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weight.int4_values().contiguous(), 1)
    scales_and_zeros = torch.stack([weight.scales, weight.zeros], dim=-1).transpose(0, 1).contiguous()
    return owned(packed), owned(scales_and_zeros)


def _rows_per_slice(in_features: int) -> int:
    """Rows of SLICE_WEIGHTS weights or so, a multiple of the kernels' blocks of 16 rows."""
    return max(16, SLICE_WEIGHTS // in_features // 16 * 16)


def kernel_product(mode: str, x: Any, packed: Any, scales: Any) -> Any:
    """x [M, K] times the packed weight, through torch's bfloat16 kernel; bfloat16 [M, N]."""
    import torch

    a = x.to(torch.bfloat16)
    # Eager: make sure of the alignment. Compiled (--compile), the check would break the graph;
    # inductor hands extern kernels buffers of its own, allocated aligned.
    a = a.contiguous() if torch.compiler.is_compiling() else owned(a)
    if mode == "int8":
        return torch.ops.aten._weight_int8pack_mm(a, packed, scales)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(a, packed, INT4_GROUP, scales)


def refined_top(y: Any, x: Any, values: Any, scales: Any) -> Any:
    """`y` [M, N] (the bfloat16 kernel's product of x and an int8 weight) in float32, each row's
    REFINED largest outputs recomputed from float32 x.

    For an output head: bfloat16 resolves a logit near 15 to 0.0625, coarser than the gap
    between SmolLM2's two best tokens at some steps (0.037, measured), so greedy picked the
    other one. The winner is among the bfloat16 product's best few; those few are now exact.
    """
    import torch

    y = y.float()
    top = y.topk(min(REFINED, y.shape[-1]), dim=-1).indices  # [M, k]
    exact = torch.einsum("mk,mjk->mj", x.float(), values[top].float()) * scales[top].float()
    return y.scatter(-1, top, exact)


def split_int8_product(x: Any, values: Any, scales: Any) -> Any:
    """x [M, K] float32 times the int8 weight `values` [N, K] with per-row `scales`: float32 [M, N].

    Each row of x is step = max/127 times int8 `high` (rounded, so |x/step - high| <= 1/2) plus
    step/254 times int8 `low` (rounded again): within max/64516 of x everywhere. The int32 sums
    are exact, so the product is as close to float32's as that split is (~1e-4 relative).
    """
    import torch

    # abs().amax() rather than vector_norm(x, inf): the same values, and much faster over many rows.
    step = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-30) / 127
    u = x / step
    high = torch.round(u)
    low = torch.round((u - high) * 254).to(torch.int8)
    high = high.to(torch.int8)
    values_t = values.t()
    # one row: two calls take torch's matrix-vector path, faster than one of two rows (measured)
    if x.shape[0] == 1:
        high_sums, low_sums = torch._int_mm(high, values_t), torch._int_mm(low, values_t)
    else:
        sums = torch._int_mm(torch.cat([high, low]), values_t)
        high_sums, low_sums = sums[:x.shape[0]], sums[x.shape[0]:]
    return torch.add(high_sums.float(), low_sums, alpha=1 / 254) * step * scales


_checked: dict[tuple[str, int, int, bool], bool] = {}


def check_kernel(weight: QuantizedWeight, packed: Any, scales: Any, vnni: bool = False) -> bool:
    """Once per distinct shape: one product against the dequantized weight; whether int8 splits.

    A CPU whose kernel reads the packing differently gives garbage here, not in the output.
    int8 tries the split product first: oneDNN without VNNI (AVX2, ONEDNN_MAX_CPU_ISA=AVX2)
    gives wrong int8 sums for large values, so its extreme rows are checked exactly, and such a
    CPU falls back to the bfloat16 kernel. lmpipe's kernels (`vnni`) are held to the split
    product's tolerance: their activations are split the same way.
    """
    import torch

    key = (weight.mode, weight.out_features, weight.in_features, vnni)
    if key in _checked:
        return _checked[key]
    # 5 rows: a full block and a tail
    x = torch.randn(5, weight.in_features, generator=torch.Generator().manual_seed(0))
    # The product runs over the whole weight; it is compared on its first and last output rows
    # (a wrong packing scrambles every block), since a float32 copy of a whole output head would
    # be the largest tensor of the load's peak.
    first = min(CHECK_ROWS, _rows_per_slice(weight.in_features), weight.out_features)
    sample = torch.cat([torch.arange(first), torch.arange(max(first, weight.out_features - 64), weight.out_features)])
    reference = weight.rows(sample).dequantized().t()
    if vnni:
        got = product(weight.mode, x, packed, scales, weight.out_features)[:, sample]
        _require_close(weight, "lmpipe's", got, x @ reference, EXACT_TOLERANCE)
        _checked[key] = False
        return False
    split = weight.mode == "int8" and _split_is_exact(packed, scales.float(), x, x @ reference, sample)
    if not split:
        got = kernel_product(weight.mode, x, packed, scales).float()[:, sample]
        _require_close(weight, "torch's", got, x.to(torch.bfloat16).float() @ reference, CHECK_TOLERANCE)
    _checked[key] = split
    return split


def _require_close(weight: QuantizedWeight, whose: str, got: Any, expected: Any, tolerance: float) -> None:
    """A kernel's product against the dequantized weight's: a one-line UsageError naming the CPU when it is off."""
    error = float((got - expected).norm() / expected.norm().clamp(min=1e-12))
    if not error < tolerance and weight.mode not in MODES:  # a GGUF's own format (q4k, q4_0), not --quantize's
        raise UsageError(
            f"a GGUF's {weight.mode} tensors: {whose} kernel gives wrong products on this CPU ({cpu_name()}; "
            f"relative error {error:.2g} for a {weight.out_features}x{weight.in_features} weight); "
            f"LMPIPE_KERNEL_ISA=none runs torch's kernels instead")
    if not error < tolerance:
        raise UsageError(
            f"--quantize {weight.mode}: {whose} {weight.mode} kernel gives wrong products on this CPU "
            f"({cpu_name()}; relative error {error:.2g} for a {weight.out_features}x{weight.in_features} "
            f"weight); use {'--quantize int8 or ' if weight.mode == 'int4' else ''}no --quantize")


def _split_is_exact(values: Any, scales: Any, x: Any, expected: Any, sample: Any) -> bool:
    import torch

    extreme = torch.full((2, values.shape[1]), 127, dtype=torch.int8)
    extreme[1] = -127
    # What rows of +-127 give, a slice at a time: an int32 copy of a whole output head would be
    # four times the head's int8 size.
    sums = torch.cat([part.sum(dim=1, dtype=torch.int32) for part in values.split(1024)]) * 127
    expected_sums = torch.stack([sums, -sums])
    for rows in (1, 2):  # one row and several take different paths
        if not torch.equal(torch._int_mm(extreme[:rows], values.t()), expected_sums[:rows]):
            return False
    for rows in (x[:1], x):
        got, want = split_int8_product(rows, values, scales)[:, sample], expected[:rows.shape[0]]
        if not float((got - want).norm() / want.norm().clamp(min=1e-12)) < EXACT_TOLERANCE:
            return False
    return True


def cpu_name() -> str:
    """The CPU's model name and the instruction set torch's kernels dispatch to, for messages and benchmarks."""
    import platform

    import torch

    name = cpuinfo("model name") or platform.processor() or platform.machine()
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def lookup(ids: Any, values: Any, scales: Any, dtype: Any) -> Any:
    """Rows `ids` of an int8 matrix with per-row scales, dequantized as QuantizedWeight.dequantized does;
    `values` plain [N, K] int8, or packed for the VNNI kernel (uint8)."""
    import torch

    rows = vnni_kernels.int8_rows(values, ids) if values.dtype == torch.uint8 else values[ids]
    return rows.to(dtype) * scales[ids].to(dtype)[..., None]


def choose_kernels(model: Any, forced: str | None = None, say: Any = None,
                   activations: str = kernel_choice.EXACT) -> dict[str, str]:
    """Each layer on lmpipe's kernels gets its kernel per range of rows (lmpipe.models.kernels.choice):
    `forced` (--kernel), or the fastest measured here, taking `activations` as --activations says.
    Returns the choice per range, for the manifest ({} where no layer runs lmpipe's kernels)."""
    if activations != kernel_choice.EXACT and vnni_kernels.available():
        _int8_onto_lmpipe_kernels(model)
    layers = [m for m in model.modules() if getattr(m, "vnni", False)]
    if not layers:
        quantized = any(hasattr(m, "vnni") for m in model.modules())
        why = vnni_kernels.reason or ("its quantized layers run torch's kernels here" if quantized else
                                      "this model has no quantized layer")
        if forced is not None:
            raise UsageError(f"--kernel {forced}: lmpipe's kernels cannot run here ({why})")
        if activations != kernel_choice.EXACT:
            raise UsageError(f"--activations {activations} is for quantized layers on lmpipe's kernels, "
                             f"and none run here ({why})")
        return {}
    return kernel_choice.choose(layers, forced, say, activations)


def _int8_onto_lmpipe_kernels(model: Any) -> None:
    """Each int8 layer on torch's kernels that lmpipe's int8 kernel takes moves onto it (torch's
    products take exact activations only), and a tied embedding looking its rows up from such a
    head follows it to the repacked values (lmpipe.models.quantized_layers.QuantizedEmbedding)."""
    moved = {}
    for module in model.modules():
        if (getattr(module, "vnni", None) is False and module.mode == "int8"
                and vnni_kernels.int8_fits(module.out_features, module.in_features)):
            old = module.packed
            module.onto_lmpipe_kernel()
            moved[id(old)] = module
    for module in model.modules():
        head = moved.get(id(getattr(module, "values", None)))
        if head is not None:
            module.values, module.scales = head.packed, head.packed_scales


def int4_kernel_name(model: Any) -> str:
    """Which kernel computes the model's int4 layers: "lmpipe-amx", "lmpipe-vnni" or "lmpipe-avx2"
    (lmpipe.models.kernels.vnni, AMX, AVX-512 VNNI or AVX2), or "torch"."""
    isa = next((m.isa for m in model.modules() if getattr(m, "vnni", False)), None)
    return kernel_choice.NAMES[isa] if isa else "torch"


def quantizable(linear: Any, mode: str) -> bool:
    """Whether torch's kernel takes this shape: its AVX-512 paths step K by 16 (int8) and N by 16 (int4)."""
    if mode in ("int4", "q4_0"):
        return linear.in_features % INT4_GROUP == 0 and linear.out_features % 16 == 0
    if mode == "q4k":
        return linear.in_features % Q4K_SUPER == 0 and linear.out_features % 16 == 0
    return linear.in_features % 16 == 0


def check_mode(mode: str, device: str) -> None:
    if mode not in MODES:
        raise UsageError(f"--quantize must be one of {', '.join(MODES)}")
    if device != "cpu":
        raise UsageError(f"--quantize {mode} uses torch's CPU kernels; use --device cpu")


def module_name(model: Any, module: Any) -> str | None:
    """`module`'s name inside `model`, or None (also for None)."""
    return next((n for n, m in model.named_modules() if module is not None and m is module), None)


def tied_head(model: Any, weights: dict[str, QuantizedWeight]) -> str | None:
    """The name of the output head in `weights` that install will share with the input embedding
    (QuantizedEmbedding): a tied model's head, int8 (an int4 model's head is int8 too); else None."""
    from torch import nn

    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    name = module_name(model, head)
    weight = weights.get(name) if name is not None else None
    if weight is None or weight.mode != "int8" or not isinstance(embedding, nn.Embedding):
        return None
    return name if tuple(embedding.weight.shape) == (weight.out_features, weight.in_features) else None


HEAD_MODES = {"int4": "int8"}  # the output head's own mode, where it differs from the layers'


def layer_modes(model: Any, names: Any, mode: str) -> dict[str, str]:
    """The mode each named linear is quantized to: `mode`, except an int4 model's output head, which is int8.

    The head turns the last hidden state into every token's score, and each weight of it is
    one token's: on SmolLM2 an int4 head alone cost almost all of int4's perplexity loss, an
    int8 head little of it. llama.cpp's 4-bit files keep their output tensors at 6 or 8 bits for
    the same reason.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_name = module_name(model, head)
    return {name: HEAD_MODES.get(mode, mode) if name == head_name else mode for name in names}
