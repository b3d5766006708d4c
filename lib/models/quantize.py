"""Weight-only quantization of a loaded model's linear layers: int8 per channel, int4 per group.

Decoding one token reads every weight once, so on a CPU single-stream speed is a matter of
bytes per token: int8 reads a quarter of float32, int4 an eighth. Activations stay in the
model's dtype outside the layer; torch's own CPU kernels do the mixed matmul
(`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`), as gpt-fast and torchao do. Those
kernels are fast with bfloat16 activations and fall back to a slow path with float32 ones
(measured: ~10x slower), so a float32 model's activations enter each quantized layer as
bfloat16 and leave as float32 again. For many rows at once (prefill, batches past 8) the
int8 kernel loses to a float matmul over the dequantized weight, which int8 layers use there.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError

MODES = ("int8", "int4")
INT4_GROUP = 32
KERNEL_MAX_ROWS = 8  # int8: past this many rows a dequantized float matmul is faster (measured)


def _nn():
    import torch

    return torch, torch.nn


def int8_weights(weight) -> tuple[Any, Any]:
    """Symmetric per-output-channel int8: weight ≈ q * scale[:, None]."""
    import torch

    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)
    q = torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scale.to(torch.bfloat16)


def int4_weights(weight, group: int = INT4_GROUP) -> tuple[Any, Any]:
    """Asymmetric int4 per group of `group` input columns, packed for torch's CPU kernel."""
    import torch

    out_features, in_features = weight.shape
    w = weight.detach().float().reshape(out_features, in_features // group, group)
    low, high = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-6)
    q = torch.round((w - low) / scale).clamp(0, 15).to(torch.int32).reshape(out_features, in_features)
    zero = low + scale * 8  # the kernel computes (q - 8) * scale + zero
    scales_and_zeros = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    return packed, scales_and_zeros


def quantized_linear_class():
    """The QuantizedLinear module class (built on first use, so importing this module stays torch-free)."""
    global _QuantizedLinear
    if _QuantizedLinear is None:
        _QuantizedLinear = _build_class()
    return _QuantizedLinear


_QuantizedLinear: Any = None


def _build_class():
    torch, nn = _nn()

    class QuantizedLinear(nn.Module):
        """A Linear whose weight is int8 (per channel) or int4 (per group); bias kept as it was."""

        def __init__(self, linear: Any, mode: str, buffers: tuple[Any, Any] | None = None):
            super().__init__()
            self.mode = mode
            self.in_features, self.out_features = linear.in_features, linear.out_features
            if buffers is not None:
                q, scale = buffers
            elif mode == "int8":
                q, scale = int8_weights(linear.weight)
            else:
                q, scale = int4_weights(linear.weight)
            self.register_buffer("qweight", q)
            self.register_buffer("qscale", scale)
            self.bias = linear.bias

        def forward(self, x):
            flat = x.reshape(-1, x.shape[-1])
            if self.mode == "int8" and flat.shape[0] > KERNEL_MAX_ROWS:
                # Many rows (a prompt, a big batch): dequantize into a float matmul, which beats the kernel.
                y = (flat @ self.qweight.t().to(flat.dtype)) * self.qscale.to(flat.dtype)
            elif self.mode == "int8":
                y = torch.ops.aten._weight_int8pack_mm(flat.to(torch.bfloat16), self.qweight, self.qscale)
            else:
                flat = flat.to(torch.bfloat16)
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, INT4_GROUP, self.qscale)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias

    return QuantizedLinear


def fuse_quantized(layers: list[Any]) -> Any:
    """One quantized layer computing several that read the same input (outputs side by side).

    Both layouts keep one row (int8) or one column of scales (int4) per output feature, so the
    fused layer's outputs are exactly the parts' outputs, concatenated.
    """
    import torch

    mode = layers[0].mode
    q = torch.cat([m.qweight for m in layers], dim=0)
    scale = torch.cat([m.qscale for m in layers], dim=0 if mode == "int8" else 1)
    biases = [m.bias for m in layers]
    shape = torch.nn.Linear(layers[0].in_features, sum(m.out_features for m in layers), bias=False, device="meta")
    fused = quantized_linear_class()(shape, mode, (q, scale))
    start = 0
    for m in layers:  # the parts become views of the fused buffers: no second copy of the weights
        end = start + m.out_features
        m.qweight = q[start:end]
        m.qscale = scale[start:end] if mode == "int8" else scale[:, start:end].contiguous()
        start = end
    if any(b is not None for b in biases):
        fused.bias = torch.nn.Parameter(torch.cat([
            b.detach() if b is not None else q.new_zeros(m.out_features, dtype=torch.float32)
            for b, m in zip(biases, layers)]), requires_grad=False)
    return fused


def quantizable(linear: Any, mode: str) -> bool:
    if mode == "int4":
        return linear.in_features % INT4_GROUP == 0 and linear.out_features % 8 == 0
    return True


def check_mode(mode: str, device: str) -> None:
    if mode not in MODES:
        raise UsageError(f"--quantize must be one of {', '.join(MODES)}")
    if device != "cpu":
        raise UsageError(f"--quantize {mode} uses torch's CPU kernels; use --device cpu")


def quantize(model: Any, mode: str, device: str = "cpu") -> int:
    """Replace the model's Linear layers (the output head included) in place; return how many."""
    _, nn = _nn()
    check_mode(mode, device)
    quantized = quantized_linear_class()
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear) and quantizable(child, mode)
    ]
    for parent, name, child in targets:
        setattr(parent, name, quantized(child, mode))
    # A tied output head shared its weight with the embedding: the embedding keeps the float copy.
    return len(targets)
