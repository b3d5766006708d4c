"""int4 weights times float32 activations with AVX-512 VNNI integer dot products (int4_vnni.cpp).

torch's int4 CPU kernel (`_weight_int4pack_mm_for_cpu`) turns every weight into a float and
multiplies in bfloat16. On a CPU with AVX-512 VNNI one instruction does 64 multiply-adds of
4-bit weights with int8 activations, which is how llama.cpp runs its 4-bit blocks. torchao's x86
kernels of that kind are not in its PyPI wheel, so lmpipe carries its own: a hundred lines of
C++, compiled with torch's extension builder into lmpipe's cache the first time an int4 model
loads (about 8 s, once per torch version), and registered as torch.ops.lmpipe.int4_mm, so a
compiled decode step calls it like any torch operator.

The activations are split per group of 32 into two int8 parts (see int4_vnni.cpp), so the
product is within ~1e-5 of the dequantized float32 weight's; torch's kernel, fed bfloat16, is
~2e-3 from it. Measured on the 2-core AMD EPYC (Zen 4), one row of activations, a 3072x576
weight: 17.2 us against torch's 28.4; 64 rows 689 against 746.

Where the CPU lacks VNNI or no C++ compiler is found, `available()` says no (and `reason` why)
and int4 layers keep torch's kernel. The packed layout is lmpipe's own, made from the portable
values at load time, never saved.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import Any

GROUP = 32  # columns per scale and zero: lmpipe.models.quantize.INT4_GROUP
ROWS = 16  # output rows per block of the packed layout
SOURCE = Path(__file__).with_name("int4_vnni.cpp")
CPU_FLAGS = ("avx512f", "avx512bw", "avx512_vnni")

reason: str | None = None  # why the kernel is not available, once available() said so
_lock = threading.Lock()


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@cache
def available() -> bool:
    """Whether torch.ops.lmpipe.int4_mm can run here: built (or built now) and the CPU has VNNI."""
    global reason
    import platform

    if platform.machine() not in ("x86_64", "AMD64") or not set(CPU_FLAGS) <= _cpu_flags():
        reason = f"the CPU lacks {' or '.join(CPU_FLAGS)}"
        return False
    with _lock:
        try:
            _build()
        except Exception as exc:  # no compiler, no ninja, a failed build: torch's kernel instead
            lines = str(exc).strip().splitlines()
            reason = f"building lmpipe's int4 kernel failed: {lines[-1] if lines else type(exc).__name__}"
            return False
    import torch

    if not torch.ops.lmpipe.int4_mm_supported():
        reason = "the CPU lacks AVX-512 VNNI"
        return False
    return True


def _build() -> None:
    import torch
    from torch.utils.cpp_extension import load

    from ...paths import kernels_dir

    build = kernels_dir() / f"torch-{torch.__version__}"
    build.mkdir(parents=True, exist_ok=True)
    # The source's hash is part of the build, so an edited kernel is rebuilt; the CPU's
    # instruction set is chosen per function (target attributes), so one build serves any x86-64.
    load(name="lmpipe_int4", sources=[str(SOURCE)], extra_cflags=["-O3"], is_python_module=False,
         build_directory=str(build), verbose=False)

    @torch.library.register_fake("lmpipe::int4_mm")
    def _(x, packed, n):
        return x.new_empty(x.shape[0], n)


def fits(out_features: int, in_features: int) -> bool:
    return out_features % ROWS == 0 and in_features % GROUP == 0


def pack(values: Any, scales: Any, zeros: Any) -> Any:
    """The kernel's layout (int4_vnni.cpp) of an int4 weight: `values` [N, K] 0..15 (int32),
    `scales` and `zeros` bfloat16 [N, K/32]; one contiguous uint8 buffer."""
    import torch

    n, k = values.shape
    blocks, groups = n // ROWS, k // GROUP
    # [block, row, group, part, nibble, column] -> [block, group, part, row, column, nibble]
    q = values.view(blocks, ROWS, groups, 4, 2, 4).permute(0, 2, 3, 1, 5, 4)
    nibbles = (q[..., 0] | (q[..., 1] << 4)).to(torch.uint8).reshape(blocks, groups, 4 * 64)

    def per_block(t):
        return t.view(blocks, ROWS, groups).permute(0, 2, 1).contiguous().view(torch.uint8).reshape(blocks, groups, 32)

    return torch.cat([nibbles, per_block(scales), per_block(zeros)], dim=-1).reshape(-1).contiguous()


def product(x: Any, packed: Any, out_features: int) -> Any:
    """x [M, K] times the packed weight: float32 [M, N]."""
    import torch

    return torch.ops.lmpipe.int4_mm(x.float().contiguous(), packed, out_features)
