"""int4 and int8 weights times float32 activations with 8-bit integer dot products (vnni.cpp).

torch's int4 CPU kernel (`_weight_int4pack_mm_for_cpu`) turns every weight into a float and
multiplies in bfloat16; its int8 one (`_weight_int8pack_mm`) takes and returns bfloat16 too, and
the exact alternative, int8's split product over `torch._int_mm`, reads the weight twice (and
oneDNN gives wrong int8 sums without VNNI). On a CPU with AVX-512 VNNI one instruction does 64
multiply-adds of 8-bit numbers, which is how llama.cpp runs its blocks; with AVX2 two
instructions do 32 (vpmaddubsw, vpmaddwd), llama.cpp's AVX2 path. torchao's x86 kernels of that
kind are not in its PyPI wheel, so lmpipe carries its own: short C++ kernels for both
instruction sets, on the same packed layouts, compiled with torch's extension builder into
lmpipe's cache the first time a quantized model loads (once per source and torch version), and
registered as torch.ops.lmpipe.int4_mm and int8_mm (AVX-512 VNNI) and int4_mm_avx2 and
int8_mm_avx2 (and q4k_mm, q4_0_mm and their AVX2 twins for a GGUF's Q4_K and Q4_0 on their own
scales), so a compiled decode step calls them like any torch operator. With AMX-INT8
(Sapphire Rapids and later), int4_mm_amx and int8_mm_amx multiply each whole block of 16
activation rows in AMX's tiles (one instruction: 16 rows by 16 outputs by 64 bytes), and a last,
partial block padded with zero rows where it holds enough rows, else with the VNNI code: the
same integer sums and the same float steps, so the same results as int4_mm and int8_mm, bit for
bit. The build folder is named by the source's hash and torch's version, and is this user's
alone (build_folder); builds take a lock of lmpipe's own (_compile).

The activations are split into two int8 parts (see vnni.cpp), so a product is within ~1e-5
(int4) or ~1e-4 (int8) of the dequantized float32 weight's, on either instruction set; torch's
kernels, fed bfloat16, are ~2e-3 from it.

The same build carries the compiled decode step's attention for one query per row
(`attend_one`): torch's two batched matmuls over the cache's whole width (rounded up to 256
columns) pay two dispatches per layer and read every column; it reads only the columns in use.

The instruction set is the best the CPU has (`isa`); LMPIPE_KERNEL_ISA=avx2 (or avx512, amx, or
none) forces one, so the AVX2 path runs, and is tested, on AVX-512 machines too. Which one
multiplies each range of row counts is then measured (lmpipe.models.kernels.choice). Where the CPU
has neither, or no C++ compiler is found, `available()` says no (and `reason` why) and the
layers keep torch's kernels. The packed layouts (int4's, q4k's, int8's) are lmpipe's own, made
from the portable values at load time by the same build (gguf_blocks.cpp, which also turns a
GGUF's blocks into those values); only lmpipe.models.packed_cache keeps them, in a file of its
own documented format.
"""

from __future__ import annotations

import os
import stat
import threading
from functools import cache
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ..device import cpuinfo

GROUP = 32  # int4 columns per scale and zero: lmpipe.models.quantize.INT4_GROUP
ROWS = 16  # int4 output rows per block of the packed layout
Q4K_BLOCK = 8 * 256 + 64 + 8 * 32  # bytes per 16 rows and 256 columns of Q4_K's layout (vnni.cpp)
Q4_0_BLOCK = 256 + 32  # bytes per 16 rows and 32 columns of Q4_0's layout (vnni.cpp)
SOURCE = Path(__file__).with_name("vnni.cpp")
# built with it: a GGUF's blocks into lmpipe's formats, and every packing (torch.ops.lmpipe.gguf_int4, ...)
SOURCES = (SOURCE, Path(__file__).with_name("gguf_blocks.cpp"))
# The instruction sets the kernels are built for, best first, with the CPU flags each needs.
# amx's ops are avx512's with AMX tiles for blocks of 16 rows.
ISAS = {"amx": ("amx_tile", "amx_int8", "avx512f", "avx512bw", "avx512_vnni"),
        "avx512": ("avx512f", "avx512bw", "avx512_vnni"), "avx2": ("avx2", "fma")}
CPU_FLAGS = ISAS["avx512"]
OP_SUFFIX = {"amx": "_amx", "avx512": "", "avx2": "_avx2"}  # torch.ops.lmpipe's names per instruction set
# A GGUF's Q4_K and Q4_0 on their own scales (lmpipe.models.quantize.QuantizedWeight's modes): only
# lmpipe's kernels take them, and those have no AMX tile code.
OWN_SCALES = ("q4k", "q4_0")
# ops an AMX CPU runs as AVX-512's: attention's one query per row leaves tiles nothing to do, and
# the GGUF's own layouts have no tile code (yet)
NO_AMX_OP = ("attend_one", *(f"{mode}_mm" for mode in OWN_SCALES))
# amx, avx512, avx2 or none: which of lmpipe's kernels run (default: the best the CPU has)
ISA_ENV = "LMPIPE_KERNEL_ISA"

reason: str | None = None  # why the kernels are not available, once available() said so
selected: str | None = None  # the instruction set the kernels run with, once available() said yes
_lock = threading.Lock()  # one build and registration per process, whichever thread asks first
_built = False
_amx_built = True  # False once the build turns out to lack AMX's ops (a compiler before gcc 11 or clang 12)


def _cpu_flags() -> set[str]:
    return set((cpuinfo("flags") or "").split())


def _torch_isa() -> str:
    """The instruction set torch's own kernels dispatch to ("AVX512", "AVX2", "DEFAULT", ...)."""
    import torch

    return torch.backends.cpu.get_cpu_capability().upper()


def runnable() -> list[str]:
    """The instruction sets of ISAS this CPU has and torch itself runs at, best first (whether
    the kernels build aside). Never above torch's: with ATEN_CPU_CAPABILITY=avx2 on an AVX-512
    CPU, inductor compiles its code for AVX2, and lmpipe's AVX-512 kernels inside such a compiled
    step gave wrong steps; a real AVX2 CPU runs the AVX2 kernels, and so does this one then."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    flags = _cpu_flags()
    torch_isa = _torch_isa()
    allowed: tuple[str, ...] = ("amx", "avx512", "avx2") if torch_isa.startswith("AVX512") else \
        ("avx2",) if torch_isa.startswith("AVX2") else ()
    return [isa for isa, needs in ISAS.items()
            if set(needs) <= flags and isa in allowed and (isa != "amx" or _amx_missing() is None)]


def _amx_missing() -> str | None:
    """Why AMX's ops cannot run on a CPU that has AMX, or None where they can."""
    if not _amx_built:
        return "lmpipe's kernels were built without AMX (by a compiler older than gcc 11 or clang 12)"
    if not amx_permitted():
        return "Linux refused this process AMX's tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    return None


@cache
def amx_permitted() -> bool:
    """Whether Linux lets this process use AMX's tiles: it hands their state out only to a process
    that asks (arch_prctl ARCH_REQ_XCOMP_PERM, Linux 5.16 and later), and the kernels' first AMX
    op would ask anyway; asked here, a refusal leaves AMX out of `runnable` rather than failing there."""
    import ctypes
    import sys

    if sys.platform != "linux":
        return False
    sys_arch_prctl, arch_req_xcomp_perm, xfeature_xtiledata = 158, 0x1023, 18  # x86-64's numbers
    args = (ctypes.c_long(sys_arch_prctl), ctypes.c_long(arch_req_xcomp_perm), ctypes.c_long(xfeature_xtiledata))
    return ctypes.CDLL(None, use_errno=True).syscall(*args) == 0


def forced() -> bool:
    """Whether LMPIPE_KERNEL_ISA names the instruction set (rather than leaving it to the CPU)."""
    return os.environ.get(ISA_ENV, "").strip().lower() in ISAS


@cache
def available() -> bool:
    """Whether torch.ops.lmpipe's kernels can run here: built (or built now) and the CPU has an
    instruction set of ISAS (LMPIPE_KERNEL_ISA's, where set). Sets `selected`, or `reason`."""
    global reason, selected
    wanted = os.environ.get(ISA_ENV, "").strip().lower()
    if wanted and wanted not in (*ISAS, "none"):
        raise UsageError(f"{ISA_ENV} must be one of {', '.join(ISAS)}, none (got {wanted!r})")
    if wanted == "none":
        reason = f"{ISA_ENV}=none"
        return False
    have = runnable()
    choice = wanted if wanted in have else None if wanted else next(iter(have), None)
    if choice is None:
        # amx needs what avx512 does and more: a CPU without an ISA of the others lacks it too
        needs = ISAS[wanted] if wanted else tuple(" and ".join(n) for isa, n in ISAS.items() if isa != "amx")
        if wanted == "amx" and set(ISAS[wanted]) <= _cpu_flags() and _torch_isa().startswith("AVX512"):
            reason = _amx_missing()
        elif wanted and set(ISAS[wanted]) <= _cpu_flags():
            reason = f"torch itself runs at {_torch_isa()} here (ATEN_CPU_CAPABILITY), below {wanted}"
        else:
            reason = f"the CPU lacks {' or '.join(needs)}"
        return False
    with _lock:
        try:
            _build()
        except Exception as exc:  # no compiler, no ninja, a failed build: torch's kernels instead
            lines = str(exc).strip().splitlines()
            reason = f"building lmpipe's kernels failed: {lines[-1] if lines else type(exc).__name__}"
            return False
    if choice == "amx" and (missing := _amx_missing()):  # this build's compiler left AMX's ops out
        if wanted:
            reason = missing
            return False
        choice = runnable()[0]  # AVX-512 VNNI's, which the CPU has with AMX
    selected = choice
    return True


def _build() -> None:
    global _built, _amx_built
    import torch

    from ...paths import kernels_dir

    if _built:
        return
    _compile(build_folder(kernels_dir()))
    _amx_built = bool(torch.ops.lmpipe.amx_built())

    for suffix in OP_SUFFIX.values():
        @torch.library.register_fake(f"lmpipe::int4_mm{suffix}")
        def _(x, packed, n, parts=2):
            return x.new_empty(x.shape[0], n)

        @torch.library.register_fake(f"lmpipe::int8_mm{suffix}")
        def _(x, packed, scales, parts=2):
            return x.new_empty(x.shape[0], packed.shape[0] * ROWS)

        if suffix != "_amx":  # attention and Q4_K have no AMX op: amx runs avx512's (_op)
            @torch.library.register_fake(f"lmpipe::attend_one{suffix}")
            def _(q, k, v, mask):
                return torch.empty_like(q)

            @torch.library.register_fake(f"lmpipe::q4k_mm{suffix}")
            def _(x, packed, n, parts=2):
                return x.new_empty(x.shape[0], n)

            @torch.library.register_fake(f"lmpipe::q4_0_mm{suffix}")
            def _(x, packed, n, parts=2):
                return x.new_empty(x.shape[0], n)

    _built = True


def build_folder(kernels: Path) -> Path:
    """The build's folder under `kernels`, named by the source's sha256 and torch's version (an
    edited kernel or another torch builds afresh, never loads a library built from other code),
    this user's alone: mode 0700, and refused if another user owns it (they could plant the library)."""
    import hashlib

    import torch

    digest = hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES)).hexdigest()[:16]
    build = kernels / f"vnni-{digest}-torch-{torch.__version__}"
    build.mkdir(mode=0o700, parents=True, exist_ok=True)
    facts = build.lstat()
    if facts.st_uid != os.getuid() or not stat.S_ISDIR(facts.st_mode):
        raise RuntimeError(f"{build} is not a folder of this user's: remove it to build the kernels")
    if stat.S_IMODE(facts.st_mode) != 0o700:
        build.chmod(0o700)
    return build


def _compile(build: Path) -> None:
    """torch's extension build into `build`, under a lock of lmpipe's own: torch's (`lock`, a
    file it makes and waits on while it exists) outlives a build that was killed, and every
    later load would wait on it forever. lmpipe's is an flock, which dies with its process:
    holding it, no live build holds torch's, so a `lock` found then is stale and removed."""
    import fcntl

    from torch.utils.cpp_extension import load

    fd = os.open(build / "lmpipe.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process's build: wait for it, then load what it built
        (build / "lock").unlink(missing_ok=True)
        # The CPU's instruction set is chosen per function (target attributes), so one build serves any x86-64.
        load(name="lmpipe_vnni", sources=[str(source) for source in SOURCES], extra_cflags=["-O3"],
             is_python_module=False, build_directory=str(build), verbose=False)
    finally:
        os.close(fd)


def _op(name: str, isa: str | None) -> Any:
    """torch.ops.lmpipe's `name` for `isa` (None: the one available() selected)."""
    import torch

    isa = isa or selected or "avx2"
    if name in NO_AMX_OP and isa == "amx":
        isa = "avx512"
    return getattr(torch.ops.lmpipe, name + OP_SUFFIX[isa])


def int4_pack(values: Any, scales: Any, zeros: Any) -> Any:
    """int4_mm's layout (vnni.cpp) of an int4 weight: `values` [N, K] 0..15 (uint8 or int32), `scales`
    and `zeros` bfloat16 [N, K/32]; one contiguous uint8 buffer. N must be a multiple of 16."""
    import torch

    n, k = values.shape
    blocks, groups = n // ROWS, k // GROUP
    # [block, row, group, part, nibble, column] -> [block, group, part, row, column, nibble]
    q = values.view(blocks, ROWS, groups, 4, 2, 4).permute(0, 2, 3, 1, 5, 4)
    nibbles = (q[..., 0] | (q[..., 1] << 4)).to(torch.uint8).reshape(blocks, groups, 4 * 64)

    def per_block(t):
        return t.view(blocks, ROWS, groups).permute(0, 2, 1).contiguous().view(torch.uint8).reshape(blocks, groups, 32)

    return torch.cat([nibbles, per_block(scales), per_block(zeros)], dim=-1).reshape(-1).contiguous()


def int4_pack_pairs(values: Any, scales: Any, zeros: Any) -> Any:
    """int4_pack's result from int4's portable bytes `values` uint8 [N, K/2] (column 2j in the low
    nibble of byte j, 2j + 1 in the high one), by the build's op (gguf_blocks.cpp): each 32-bit
    word of 8 columns has its nibbles reordered in place, never one value per byte."""
    import torch

    return torch.ops.lmpipe.int4_pack_pairs(values.contiguous(), scales.contiguous(), zeros.contiguous())


def q4k_pack(values: Any, dm: Any, scm: Any) -> Any:
    """q4k_mm's layout (vnni.cpp's Q4K_BLOCK) of a q4k weight (lmpipe.models.quantize.QuantizedWeight):
    its portable bytes, float16 (d, dmin) per super-block and (sc, m) per group."""
    import torch

    return torch.ops.lmpipe.q4k_pack(values.contiguous(), dm.contiguous(), scm.contiguous())


def q4_0_pack(values: Any, d: Any) -> Any:
    """q4_0_mm's layout (vnni.cpp's Q4_0_BLOCK) of a q4_0 weight (lmpipe.models.quantize.QuantizedWeight):
    its portable bytes and float16 d [N, K/32]."""
    import torch

    return torch.ops.lmpipe.q4_0_pack(values.contiguous(), d.contiguous())


def q4_0_product(x: Any, packed: Any, out_features: int, isa: str | None = None, parts: int = 2) -> Any:
    """x [M, K] times a weight packed by q4_0_pack: float32 [M, N]."""
    return _op("q4_0_mm", isa)(x.float().contiguous(), packed, out_features, parts)


def q4k_product(x: Any, packed: Any, out_features: int, isa: str | None = None, parts: int = 2) -> Any:
    """x [M, K] times a weight packed by q4k_pack: float32 [M, N]."""
    return _op("q4k_mm", isa)(x.float().contiguous(), packed, out_features, parts)


def int4_product(x: Any, packed: Any, out_features: int, isa: str | None = None, parts: int = 2) -> Any:
    """x [M, K] times the packed int4 weight: float32 [M, N]. `isa`: one of ISAS (None: `selected`).
    `parts`: the activations as two int8 parts (float32's accuracy) or one (8-bit, per group of 32)."""
    return _op("int4_mm", isa)(x.float().contiguous(), packed, out_features, parts)


def product(mode: str, x: Any, packed: Any, scales: Any, out_features: int, isa: str | None = None,
            parts: int = 2) -> Any:
    """x [M, K] float times a weight of `mode` packed for these kernels: float32 [M, N]. `isa`: which
    instruction set's (None: `selected`). `parts`: 2, activations to float32's accuracy; 1, 8-bit
    activations (--activations int8)."""
    if mode == "int4":
        return int4_product(x, packed, out_features, isa, parts)
    if mode == "q4k":
        return q4k_product(x, packed, out_features, isa, parts)
    if mode == "q4_0":
        return q4_0_product(x, packed, out_features, isa, parts)
    return int8_product(x, packed, scales, isa, parts)


def int8_fits(out_features: int, in_features: int) -> bool:
    return out_features % ROWS == 0 and in_features % 8 == 0


def int8_pack(values: Any) -> Any:
    """int8_mm's layout (vnni.cpp) of int8 `values` [N, K]: uint8 [N/16, K/4, 16, 4], each value plus
    128. N must be a multiple of 16 and K of 8."""
    import torch

    if _built and values.shape[1] % 4 == 0:  # the build's op: the same bytes, both cores, no strided copy
        return torch.ops.lmpipe.int8_pack(values.contiguous())
    n, k = values.shape
    # An int8 value plus 128, as a byte, is the byte with its top bit flipped. Written straight
    # into the result: a wider temporary would be twice an output head's size at load's peak.
    blocks = values.view(torch.uint8).view(n // ROWS, ROWS, k // 4, 4).permute(0, 2, 1, 3)
    packed = torch.empty(blocks.shape, dtype=torch.uint8)
    return torch.bitwise_xor(blocks, 0x80, out=packed)


def int8_rows(packed: Any, index: Any) -> Any:
    """Rows `index` (a tensor of row numbers) of the int8 values packed by int8_pack, int16
    [*index.shape, K]: an embedding lookup."""
    import torch

    rows = packed[index // ROWS, :, index % ROWS, :]  # [*index.shape, K/4, 4]
    return rows.reshape(*index.shape, -1).to(torch.int16) - 128


def int8_product(x: Any, packed: Any, scales: Any, isa: str | None = None, parts: int = 2) -> Any:
    """x [M, K] times the packed int8 weight with float32 per-row `scales`: float32 [M, N]. `parts`:
    as int4_product's (a K that is not whole groups of 32 takes two)."""
    return _op("int8_mm", isa)(x.float().contiguous(), packed, scales, parts)


def attend_one(q: Any, k: Any, v: Any, mask: Any, isa: str | None = None) -> Any:
    """One query per row [B, H, 1, D] over keys and values [B, KV, W, D] where `mask` [B, 1, 1, W]
    is true: softmax(q k^T / sqrt(D)) v, float32, each query head on its group's key/value head.
    Keys and values go as they are: a view of a cache's columns in use needs no copy."""
    return _op("attend_one", isa)(q.contiguous(), k, v, mask.contiguous())
