"""Which kernel multiplies a quantized layer, per range of row counts: chosen by measurement, once per CPU.

A layer packed for lmpipe's kernels (vnni.py) can be multiplied by each instruction set's
kernel on the same packing, or by float32 on the weight dequantized from it (per call, so the
packing stays the only copy). Which is fastest depends on the CPU and on the row count: one
row of decode reads the whole weight for little arithmetic, a prompt is all arithmetic. So at
the first load on a machine each candidate is timed on each distinct layer shape at 1, 4, 16
and PROMPT_ROWS rows, and the fastest kept, for the row counts up to each. A quantized model
is then never slower than float32 on its own shapes: where no quantized kernel wins, float32
runs.

The choices are cached in lmpipe's kernel folder, per torch version (as the build is) and way of
timing (TIMING), keyed by the CPU's flags, the shape and the candidates offered; never a weight
or its layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import UsageError
from ..device import cpuinfo
from . import vnni

RANGES = (("1", 1), ("4", 4), ("16", 16), ("prompt", None))  # names and the most rows each takes
PROMPT_ROWS = 128  # the row count a prompt's range is timed at
FLOAT = "float32"  # the dequantize-then-float candidate
NAMES = {"amx": "lmpipe-amx", "avx512": "lmpipe-vnni", "avx2": "lmpipe-avx2"}  # lmpipe's kernels, by instruction set
ISAS = {name: isa for isa, name in NAMES.items()}
# Below a tile's 16 rows lmpipe-amx runs lmpipe-vnni's code, or one tile padded with zero rows that
# gains little on it: where both are offered it is not timed there, so the choice of the ranges of
# 1 and 4 rows never turns on noise between two runs of the same code.
SAME_BELOW = {"lmpipe-amx": ("lmpipe-vnni", 16)}
KERNELS = (*NAMES.values(), FLOAT)  # what --kernel takes
# --activations: how lmpipe's kernels take a layer's input. exact: each value as two int8 parts,
# float32's accuracy (~1e-5 of a product); int8: one 8-bit part per group of 32 (an int8 layer
# whose width is not whole groups keeps two), llama.cpp's arithmetic: half the integer work,
# which is most of a prompt's time on a CPU without AMX, for ~5e-3 of a product.
EXACT = "exact"
ACTIVATIONS = (EXACT, "int8")
PARTS = {EXACT: 2, "int8": 1}
SUFFIX = {EXACT: "", "int8": " activations=int8"}  # in the cache's keys: measured apart
REPEATS = 3  # timings per candidate and row count; the best one counts
# In the cache's name: a new way of timing the candidates measures afresh rather than keep what the
# old way chose (2: each timed call right after an untimed one of its own, float32 after the
# others; see timings).
TIMING = 2
# Weights a layer is timed on (its first output rows): every candidate's time grows with the rows
# alike, and the float32 candidate's dequantized copy of a whole layer (a 7B model's output head:
# 2 GB, and its temporaries more) would be the first load's peak.
MEASURED_WEIGHTS = 2 ** 21


def row_range(rows: int) -> str:
    """The name of the range of RANGES that `rows` falls in."""
    return next(name for name, most in RANGES if most is None or rows <= most)


def candidates() -> tuple[str, ...]:
    """The kernels a layer packed for lmpipe's kernels can run here: each runnable instruction set's
    (only LMPIPE_KERNEL_ISA's, where it names one) and float32."""
    if not vnni.available():
        return (FLOAT,)
    isas = [vnni.selected] if vnni.forced() and vnni.selected is not None else vnni.runnable()
    return (*(NAMES[isa] for isa in isas), FLOAT)


def dequantized(mode: str, packed: Any, scales: Any, out_features: int) -> Any:
    """The float32 weight [N, K] of a layer packed for lmpipe's kernels, as QuantizedWeight.dequantized gives it."""
    import torch

    if mode == "int8":  # [N/16, K/4, 16, 4], each value plus 128
        values = torch.bitwise_xor(packed, 0x80).view(torch.int8).permute(0, 2, 1, 3).reshape(out_features, -1)
        return values.float() * scales[:, None]
    if mode == "q4k":
        return _q4k_dequantized(packed, out_features)
    size = vnni.Q4_0_BLOCK if mode == "q4_0" else 320
    blocks = out_features // vnni.ROWS
    groups = packed.numel() // (blocks * size)
    whole = packed.view(blocks, groups, size)
    # byte 4r + c of part p: row r's column 8p + c (low nibble) and 8p + 4 + c (high nibble)
    nibbles = whole[..., :256].reshape(blocks, groups, 4, vnni.ROWS, 4)
    q = torch.stack([nibbles & 0x0F, nibbles >> 4], dim=-2)  # [block, group, part, row, nibble, column]
    q = q.permute(0, 3, 1, 2, 4, 5).reshape(blocks, vnni.ROWS, groups, vnni.GROUP).float()

    def per_row(t, dtype=torch.bfloat16):  # [block, group, 16 rows] -> [block, row, group, 1] float32
        return t.contiguous().view(dtype).permute(0, 2, 1)[..., None].float()

    if mode == "q4_0":  # the 16 rows' float16 d, and no zero
        return ((q - 8) * per_row(whole[..., 256:288], torch.float16)).reshape(out_features, groups * vnni.GROUP)
    w = (q - 8) * per_row(whole[..., 256:288]) + per_row(whole[..., 288:320])
    return w.reshape(out_features, groups * vnni.GROUP)


def _q4k_dequantized(packed: Any, out_features: int) -> Any:
    """dequantized's q4k: per block of 16 rows and super-block of 256 columns (vnni.cpp's Q4K_BLOCK),
    8 groups' nibbles as int4's, the rows' float16 d then dmin, then each group's rows' sc then m."""
    import torch

    blocks = out_features // vnni.ROWS
    supers = packed.numel() // (blocks * vnni.Q4K_BLOCK)
    whole = packed.view(blocks, supers, vnni.Q4K_BLOCK)
    nibbles = whole[..., :2048].reshape(blocks, supers, 8, 4, vnni.ROWS, 4)  # [block, super, group, part, row, column]
    q = torch.stack([nibbles & 0x0F, nibbles >> 4], dim=-2)  # [..., part, row, nibble, column]
    q = q.permute(0, 4, 1, 2, 3, 5, 6).reshape(blocks, vnni.ROWS, supers, 8, vnni.GROUP).float()
    halves = whole[..., 2048:2112].contiguous().view(torch.float16).reshape(blocks, supers, 2, vnni.ROWS).float()
    d, dmin = (halves[:, :, i].permute(0, 2, 1)[..., None] for i in (0, 1))  # [block, row, super, 1]
    small = whole[..., 2112:].reshape(blocks, supers, 8, 2, vnni.ROWS).float()  # [block, super, group, (sc, m), row]
    sc, m = (small[:, :, :, i].permute(0, 3, 1, 2) for i in (0, 1))  # [block, row, super, group]
    w = (d * sc)[..., None] * q - (dmin * m)[..., None]
    return w.reshape(out_features, supers * 8 * vnni.GROUP)


def runner(name: str, mode: str, packed: Any, scales: Any, out_features: int, parts: int = 2) -> Callable[[Any], Any]:
    """x [M, K] -> float32 [M, N] through kernel `name`, its activations in `parts` int8 parts."""
    if name == FLOAT:
        return lambda x: x.float() @ dequantized(mode, packed, scales, out_features).t()
    return lambda x: vnni.product(mode, x, packed, scales, out_features, ISAS[name], parts)


def first_rows(layer: Any) -> tuple[Any, Any, int]:
    """The packing (packed, scales, out_features) of a quantized layer's first output rows, about
    MEASURED_WEIGHTS weights: whole blocks of vnni.ROWS rows, which both layouts keep side by side."""
    blocks = layer.out_features // vnni.ROWS
    taken = min(blocks, max(1, MEASURED_WEIGHTS // (layer.in_features * vnni.ROWS)))
    rows = taken * vnni.ROWS
    if layer.mode == "int8":  # [N/16, K/4, 16, 4], per-row scales
        return layer.packed[:taken], layer.packed_scales[:rows], rows
    return layer.packed[:taken * (layer.packed.numel() // blocks)], layer.packed_scales, rows


def timings(runs: dict[str, Callable[[Any], Any]], x: Any) -> dict[str, float]:
    """Seconds each of `runs` takes on `x`: the best of REPEATS. lmpipe's kernels take turns, so a
    burst of other work on a shared machine slows each of them once rather than all of one
    kernel's repeats (the choice is cached for good), each timed call right after an untimed one
    of its own: timed right after another, a kernel would find the caches holding that one's
    data rather than its own. float32 then takes its repeats after one untimed call: a kernel
    timed after it would read its weight from memory, where float32's dequantized copy (several
    times the packed weight) pushed it. Either way the choice at few rows would follow the order
    the candidates are offered in."""
    def seconds(run: Callable[[Any], Any]) -> float:
        start = time.perf_counter()
        run(x)
        return time.perf_counter() - start

    out = dict.fromkeys(runs, float("inf"))
    for _ in range(REPEATS):
        for name in (name for name in runs if name != FLOAT):
            runs[name](x)
            out[name] = min(out[name], seconds(runs[name]))
    if FLOAT in runs:
        runs[FLOAT](x)
        out[FLOAT] = min(seconds(runs[FLOAT]) for _ in range(REPEATS))
    return out


def fastest(runs: dict[str, Callable[[Any], Any]], in_features: int) -> dict[str, str]:
    """For each range of RANGES, the name in `runs` that measured fastest on its row count."""
    import torch

    choice = {}
    for name, most in RANGES:
        rows = most or PROMPT_ROWS
        timed = {kernel: run for kernel, run in runs.items()
                 if not (kernel in SAME_BELOW and SAME_BELOW[kernel][0] in runs and rows < SAME_BELOW[kernel][1])}
        times = timings(timed, torch.randn(rows, in_features, generator=torch.Generator().manual_seed(0)))
        choice[name] = min(times, key=times.__getitem__)
    return choice


def _cache_file() -> Path:
    import torch

    from ...paths import kernels_dir

    flags = " ".join(sorted((cpuinfo("flags") or "").split()))
    cpu = hashlib.sha256(f"{cpuinfo('model name')}\n{flags}".encode()).hexdigest()[:16]
    return kernels_dir() / f"torch-{torch.__version__}" / f"choices-{TIMING}-{cpu}.json"


def choose(layers: list[Any], forced: str | None = None, say: Callable[[str], None] | None = None,
           activations: str = EXACT) -> dict[str, str]:
    """Set each layer's `kernels` (range name -> kernel name): `forced` (--kernel) for every range, else
    the measured fastest per distinct (mode, shape), cached. Returns, per range, the kernels chosen
    ("+"-joined where layers differ), for the manifest. `say`: told once where float32 runs.
    `activations` (ACTIVATIONS): how lmpipe's kernels take the activations."""
    parts = PARTS[activations]
    runnable = offered = candidates()
    if parts == 1 and NAMES["amx"] in offered:  # AMX's tiles take two parts: with one, its AVX-512 VNNI code runs
        offered = tuple(k for k in offered if k != NAMES["amx"])
        if offered == (FLOAT,):  # LMPIPE_KERNEL_ISA=amx left nothing else
            raise UsageError(f"--activations {activations}: AMX's tiles (LMPIPE_KERNEL_ISA=amx) take exact "
                             "activations; leave LMPIPE_KERNEL_ISA unset or set it to avx512")
    if forced is not None and forced not in offered:
        raise UsageError(f"--kernel {forced} takes exact activations, not --activations {activations}"
                         if forced in runnable else
                         f"--kernel {forced} cannot run on this CPU (here: {', '.join(runnable)})")
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    chosen: dict[str, dict[str, str]] = {}
    measured = False
    for layer in layers:
        # q4k and q4_0 have no AMX code: lmpipe-amx would time lmpipe-vnni's again
        here = [k for k in offered
                if not (layer.mode in vnni.OWN_SCALES and k == NAMES["amx"] and NAMES["avx512"] in offered)]
        key = f"{layer.mode} {layer.out_features}x{layer.in_features} {','.join(here)}" + SUFFIX[activations]
        if key not in chosen:
            if forced is not None:
                chosen[key] = {name: forced for name, _ in RANGES}
            elif isinstance(cached.get(key), dict) and set(cached[key].values()) <= set(here):
                chosen[key] = cached[key]
            else:
                runs = {k: runner(k, layer.mode, *first_rows(layer), parts) for k in here}
                chosen[key] = cached[key] = fastest(runs, layer.in_features)
                measured = True
        layer.use_kernels(chosen[key], parts)
    if measured:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{path.name}.{os.getpid()}")  # whole or not at all: loads may run side by side
        part.write_text(json.dumps(cached, indent=1, sort_keys=True) + "\n")
        part.replace(path)
    floats = sorted({key.split()[1] for key, kernels in chosen.items() if FLOAT in kernels.values()})
    if floats and forced is None and say is not None:
        say(f"quantized kernels are slower than float32 on this CPU for some row counts of {', '.join(floats)}: "
            "those run float32 on the dequantized weights")
    return {name: "+".join(sorted({kernels[name] for kernels in chosen.values()})) for name, _ in RANGES}
