"""lmpipe's int4 and int8 kernels (AMX, AVX-512 VNNI and AVX2): built from source on first use, as
exact as int8's split product, and where they cannot run, torch's kernels instead with the reason kept.

Each kernel test runs once per instruction set the CPU has: on an AVX-512 machine the AVX2 path
is tested too, and on an AVX2-only one it is what runs. AMX's ops are held to AVX-512 VNNI's
results bit for bit, where the CPU has AMX.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from lmpipe.errors import UsageError
from lmpipe.models.device import cpuinfo
from lmpipe.models.kernels import vnni
from lmpipe.models.quantize import quantize_weight

KERNELS = vnni.runnable() if vnni.available() else []  # the instruction sets whose kernels run here
# The CPU's own AMX, whatever torch dispatches to (ATEN_CPU_CAPABILITY=avx2 leaves it out of KERNELS only).
CPU_HAS_AMX = {"amx_tile", "amx_int8"} <= set((cpuinfo("flags") or "").split())
each_kernel = pytest.mark.parametrize("isa", KERNELS)
needs_amx = pytest.mark.skipif("amx" not in KERNELS,
                               reason="lmpipe's AMX ops cannot run here (the CPU, Linux or the build lacks AMX-INT8)")


def test_some_lmpipe_kernel_runs_here():
    """The suite fails where none of the kernel tests below ran (a CPU without AVX2, a failed build)."""
    assert KERNELS, f"none of lmpipe's kernels can run on this machine: {vnni.reason}"
    assert "avx2" in KERNELS  # every CPU with AVX-512 VNNI has AVX2 and FMA as well


@each_kernel
# blocks of 2 or 4 activation rows, the rows after them, a batch; AMX's tiles of 16 rows and the rows after them
@pytest.mark.parametrize("rows", [1, 3, 4, 9, 16, 17, 40])
def test_the_product_is_the_dequantized_weights_within_the_split_products_bound(rows, isa):
    torch.manual_seed(0)
    weight = quantize_weight(torch.randn(48, 128) * 0.05, "int4")
    packed = vnni.int4_pack(weight.int4_values(), weight.scales, weight.zeros)
    x = torch.randn(rows, 128) * torch.logspace(-3, 3, 128)  # outlier-heavy rows, as residual streams have
    x[0, :32] = 0  # a group of zeros has no step to scale by, and must not divide by zero
    got = vnni.int4_product(x, packed, 48, isa)
    want = x.double() @ weight.dequantized().double().t()
    assert got.dtype == torch.float32 and got.shape == (rows, 48)
    # The split product's bound, far finer than bfloat16 activations (torch's kernel) could meet.
    assert float((got.double() - want).norm() / want.norm()) < 1e-4


@each_kernel
@pytest.mark.parametrize("rows", [1, 3, 4, 9, 15, 16, 17, 40])  # 15: the zero row last in a tile of 16
def test_the_int8_product_is_the_split_products_and_rows_come_back_out_of_the_packing(rows, isa, monkeypatch):
    from lmpipe.models.quantize import split_int8_product

    torch.manual_seed(0)
    weight = quantize_weight(torch.randn(48, 136), "int8")  # K = 136: 17 groups of 8 columns
    packed, scales = vnni.int8_pack(weight.values), weight.scales.float()
    x = torch.randn(rows + 1, 136) * torch.logspace(-3, 3, 136)
    x[-1] = 0  # a zero row has no step to scale by
    got = vnni.int8_product(x, packed, scales, isa)[:rows]
    want = x[:rows].double() @ weight.dequantized().double().t()
    assert got.shape == (rows, 48) and float((got.double() - want).norm() / want.norm()) < 1e-4
    assert torch.equal(vnni.int8_product(x, packed, scales, isa)[-1], torch.zeros(48))
    # the same arithmetic as the split product, up to float rounding; its int8 sums taken exactly
    # here (oneDNN's _int_mm without VNNI saturates them: ONEDNN_MAX_CPU_ISA=AVX2 shows it)
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: (a.long() @ b.long()).int())
    assert torch.allclose(got, split_int8_product(x[:rows], weight.values, scales), rtol=1e-5, atol=1e-5)
    ids = torch.tensor([[0, 47], [16, 5]])  # an embedding lookup reads rows back out of the blocks of 16
    assert torch.equal(vnni.int8_rows(packed, ids), weight.values[ids].to(torch.int16))


def _weights(mode: str):
    """A quantized weight of `mode` and its packing for lmpipe's kernels: (weight, packed, scales)."""
    from lmpipe.models.quantize import pack

    torch.manual_seed(0)
    if mode in ("q4k", "q4_0"):
        import numpy as np
        from tiny_gguf import encode

        from lmpipe.models import gguf_weights

        rows = (np.random.default_rng(0).standard_normal((48, 512)) * 0.05).astype(np.float32)
        blocks = encode("Q4_K" if mode == "q4k" else "Q4_0", rows, 8)
        weight = (gguf_weights.q4k_weight if mode == "q4k" else gguf_weights.q4_0_weight)(blocks, np.arange(48))
    else:
        weight = quantize_weight(torch.randn(48, 512) * 0.05, mode)
    packed, scales = pack(weight, vnni=True)
    return weight, packed, scales


def _eight_bit(x: torch.Tensor, group: int) -> torch.Tensor:
    """x with each group of `group` values in steps of its largest magnitude / 127, as the kernels'
    one part (rounding to nearest even, as theirs)."""
    g = x.reshape(x.shape[0], -1, group)
    step = g.abs().amax(dim=-1, keepdim=True) / 127
    inverse = torch.where(step > 0, 1 / step, torch.zeros_like(step))
    return (torch.round(g * inverse) * step).reshape(x.shape)


@each_kernel
@pytest.mark.parametrize("mode", ["int4", "q4k", "q4_0", "int8"])
@pytest.mark.parametrize("rows", [1, 3, 9, 17])  # below and past each instruction set's rows per pass
def test_with_int8_activations_the_product_is_the_eight_bit_activations_product(rows, mode, isa):
    """--activations int8: each group of 32 activations in 8 bits, as llama.cpp's Q8 blocks; the weight's
    scales and offsets as exact as before. The weight's offset part (int4's
    zero, Q4_K's minimum) meets the activations' float sum, as in the exact kernels."""
    from lmpipe.models.quantize import QuantizedWeight, product

    if isa == "amx":
        pytest.skip("one part runs AVX-512 VNNI's code: AMX's tiles take two")
    weight, packed, scales = _weights(mode)
    x = torch.randn(rows, 512) * torch.logspace(-2, 2, 512)
    x[0, :32] = 0  # a group of zeros has no step to scale by
    offset = QuantizedWeight(mode, torch.zeros_like(weight.values), weight.scales, weight.zeros).dequantized()
    w = weight.dequantized()
    x8 = _eight_bit(x, 32)
    want = x8.double() @ (w - offset).double().t() + x.double() @ offset.double().t()
    exact = x.double() @ w.double().t()
    got = product(mode, x, packed, scales, 48, isa, parts=1).double()
    assert float((got - want).norm() / want.norm()) < 1e-5
    # and it is not the exact product: 8 bits cost ~1e-2 here, where two parts cost ~1e-5
    assert 1e-3 < float((got - exact).norm() / exact.norm()) < 3e-2


@each_kernel
def test_an_int8_layer_whose_width_is_not_groups_of_32_keeps_exact_activations(isa):
    if isa == "amx":
        pytest.skip("one part runs AVX-512 VNNI's code")
    torch.manual_seed(0)
    weight = quantize_weight(torch.randn(48, 136), "int8")  # K = 136: 17 groups of 8 columns, not of 32
    packed, scales = vnni.int8_pack(weight.values), weight.scales.float()
    x = torch.randn(5, 136)
    assert torch.equal(vnni.int8_product(x, packed, scales, isa, parts=1), vnni.int8_product(x, packed, scales, isa))


@each_kernel
@pytest.mark.parametrize("groups", [1, 3])
def test_one_querys_attention_reads_only_the_unmasked_columns(groups, isa):
    """The compiled step's attention: what its two matmuls and masked softmax give, for rows of different lengths."""
    from lmpipe.models.fastpath import _whole_cache_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 3 * groups, 1, 40), torch.randn(3, 3, 256, 40), torch.randn(3, 3, 256, 40)
    mask = torch.zeros(3, 1, 1, 256, dtype=torch.bool)
    mask[0, ..., :1] = True  # one column: its value, whatever the score
    mask[1, ..., 30:200] = True
    mask[2, ..., ::7] = True
    k[1, :, 200:] = float("nan")  # masked columns are never read: garbage there changes nothing
    got = vnni.attend_one(q, k, v, mask, isa)
    shapes, layer = SimpleNamespace(heads=3 * groups, kv_heads=3), SimpleNamespace(scale=40 ** -0.5, softcap=None,
                                                                                  window=False)
    whole = _whole_cache_attention(shapes, mask)(q, k.nan_to_num(), v, layer)
    assert torch.allclose(got, whole, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got[0, :, 0], v[0, torch.arange(3 * groups) // groups, 0], rtol=1e-6, atol=1e-7)
    # a view of a wider cache's columns in use (the eager step's), read in place
    wide_k, wide_v = torch.randn(3, 3, 300, 40), torch.randn(3, 3, 300, 40)
    wide_k[:, :, :256], wide_v[:, :, :256] = k, v
    assert torch.equal(vnni.attend_one(q, wide_k[:, :, :256], wide_v[:, :, :256], mask, isa), got)


@each_kernel
def test_each_output_row_reads_its_own_values_scale_and_zero(isa):
    """A packing that mixed rows, groups or nibbles up would move these one-hot products."""
    values = torch.zeros(32, 64, dtype=torch.int32)
    values[5, 40] = 15  # row 5, group 1, part 1, high nibble
    values[17, 3] = 1  # row 17 (second block), group 0, part 0, low nibble
    scales = torch.ones(32, 2, dtype=torch.bfloat16)
    scales[5, 1] = 2
    zeros = torch.zeros(32, 2).to(torch.bfloat16) + 8 * scales.float().to(torch.bfloat16)  # weight = q * scale
    zeros[17, 0] = 9  # weight = q - 8 + 9 over that group
    x = torch.zeros(1, 64)
    x[0, 40], x[0, 3], x[0, 4] = 1.0, 2.0, 3.0
    got = vnni.int4_product(x, vnni.int4_pack(values, scales, zeros), 32, isa)[0]
    want = torch.zeros(32)
    want[5] = 15 * 2
    want[17] = 2 * (1 + 1) + 3 * (0 + 1)
    assert torch.allclose(got, want, rtol=1e-4, atol=0)  # the split activations: 2 is 3/127 * (85 - 85/254)


def _outlier_rows(rows: int, k: int, generator: torch.Generator) -> torch.Tensor:
    x = torch.randn(rows, k, generator=generator) * torch.logspace(-3, 3, k)
    x[0, :32] = 0  # a group (and for int8, with the row below, a whole row) with no step to scale by
    x[rows // 2] = 0
    return x


# Whole blocks of 16 rows go through AMX's tiles, and a last, partial one too where it holds enough
# rows (padded with zero rows), else the VNNI code: on the same integer sums and the same float
# steps in the same order, so the same floats, and the measured choice can switch between the two
# at any row count without changing a result. 12 and 30 end in a padded tile for int4 as for
# int8, 5 and 40 for int8 only.
AMX_ROWS = [1, 5, 12, 16, 17, 30, 40, 128]


@needs_amx
@pytest.mark.parametrize("k, n", [(32, 16), (96, 48), (256, 160)])  # 160: 10 blocks of 16, over threads
@pytest.mark.parametrize("rows", AMX_ROWS)
def test_amxs_int4_products_are_avx512_vnnis_bit_for_bit(rows, k, n):
    g = torch.Generator().manual_seed(rows * 1000 + k + n)
    values = torch.randint(0, 16, (n, k), generator=g, dtype=torch.int32)
    scales = (torch.rand(n, k // 32, generator=g) * 0.02 + 1e-3).to(torch.bfloat16)
    zeros = (torch.randn(n, k // 32, generator=g) * 0.02).to(torch.bfloat16)
    packed = vnni.int4_pack(values, scales, zeros)
    x = _outlier_rows(rows, k, g)
    assert torch.equal(vnni.int4_product(x, packed, n, "amx"), vnni.int4_product(x, packed, n, "avx512"))


@needs_amx
# K: all of it past the last whole 64 columns (8), some of it (136, 200: 8 columns past), none (256);
# 48 and 80: 3 and 5 blocks of 16, one without a second to share the activation tiles with
@pytest.mark.parametrize("k, n", [(8, 16), (136, 48), (200, 160), (256, 80)])
@pytest.mark.parametrize("rows", AMX_ROWS)
def test_amxs_int8_products_are_avx512_vnnis_bit_for_bit(rows, k, n):
    g = torch.Generator().manual_seed(rows * 1000 + k + n)
    values = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    packed, scales = vnni.int8_pack(values), torch.rand(n, generator=g) * 0.01 + 1e-4
    x = _outlier_rows(rows, k, g)
    assert torch.equal(vnni.int8_product(x, packed, scales, "amx"), vnni.int8_product(x, packed, scales, "avx512"))


@pytest.mark.skipif(not KERNELS or CPU_HAS_AMX, reason="on a CPU with AMX, its ops run")
def test_amxs_ops_refuse_a_cpu_without_amx_in_one_line():
    x, packed = torch.zeros(16, 32), torch.zeros(16 * 320 // 16, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"^lmpipe::int4_mm needs AMX-INT8 and AVX-512 VNNI, and Linux's leave") as e:
        torch.ops.lmpipe.int4_mm_amx(x, packed, 16)
    assert "\n" not in str(e.value).strip()


@each_kernel
def test_an_int4_model_runs_its_layers_through_it(tiny_llama_raw, isa, monkeypatch):
    from lmpipe.models.loading import ModelSettings, load
    from lmpipe.models.quantized_layers import QuantizedLinear

    monkeypatch.setattr(vnni, "selected", isa)  # as LMPIPE_KERNEL_ISA would have chosen
    lm = load(ModelSettings(str(tiny_llama_raw), quantize="int4"))
    # records' manifests say which kernel computed them
    assert lm.identity["int4_kernel"] == {"amx": "lmpipe-amx", "avx512": "lmpipe-vnni", "avx2": "lmpipe-avx2"}[isa]
    model = lm.model
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert all(layer.vnni and layer.isa == isa for layer in layers)  # the int4 layers, and the int8 head with them
    assert {layer.mode for layer in layers} == {"int4", "int8"}


def test_without_the_kernel_int4_keeps_torchs_and_says_why(monkeypatch, tmp_path):
    """No compiler (or a failed build): int4 still works, on torch's kernel, and the reason is kept."""
    import lmpipe.models.quantize as q
    from lmpipe.models.quantized_layers import quantize

    def fails():
        raise RuntimeError("error: command 'c++' failed\nno C++ compiler found")

    monkeypatch.setattr(vnni, "reason", vnni.reason)  # put back afterwards, as the cached answer is
    monkeypatch.delenv(vnni.ISA_ENV, raising=False)
    monkeypatch.setattr(vnni, "_build", fails)
    monkeypatch.setattr(vnni, "_torch_isa", lambda: "AVX512")
    monkeypatch.setattr(vnni, "_cpu_flags", lambda: set(vnni.CPU_FLAGS))
    monkeypatch.setattr(vnni, "available", vnni.available.__wrapped__)
    assert not vnni.available()
    assert vnni.reason == "building lmpipe's kernels failed: no C++ compiler found"
    monkeypatch.setattr(vnni, "_cpu_flags", lambda: {"avx", "sse4_2"})
    assert not vnni.available()
    assert vnni.reason == "the CPU lacks avx512f and avx512bw and avx512_vnni or avx2 and fma"
    monkeypatch.setattr(q, "_checked", {})
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=False)
    reference = quantize_weight(linear.weight, "int4").dequantized()
    model = torch.nn.Sequential(linear)
    assert quantize(model, "int4") == 1
    assert not model[0].vnni and model[0].packed_scales is not None and q.int4_kernel_name(model) == "torch"
    x = torch.randn(2, 64)
    want = x @ reference.t()
    assert float((model[0](x) - want).norm() / want.norm()) < q.CHECK_TOLERANCE  # torch's bfloat16 kernel


def test_the_build_folder_is_named_by_the_sources_and_torch_and_is_this_users_alone(tmp_path):
    import hashlib
    import stat

    digest = hashlib.sha256(b"".join(source.read_bytes() for source in vnni.SOURCES)).hexdigest()[:16]
    planted = tmp_path / f"vnni-{digest}-torch-{torch.__version__}"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)  # made by a lax umask, or by someone hoping to write a library into it
    build = vnni.build_folder(tmp_path)
    assert build == planted and stat.S_IMODE(build.stat().st_mode) == 0o700
    fresh = vnni.build_folder(tmp_path / "other")
    assert fresh.name == planted.name and stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_a_stale_torch_lock_left_by_a_killed_build_is_cleared_not_waited_on(monkeypatch, tmp_path):
    import torch.utils.cpp_extension as extension

    build = vnni.build_folder(tmp_path)
    (build / "lock").write_text("")  # torch's baton, left behind when its build was killed
    seen = []

    def load(name, sources, build_directory, **kwargs):  # torch's load would wait while `lock` exists
        seen.append((build_directory, (build / "lock").exists()))

    monkeypatch.setattr(extension, "load", load)
    vnni._compile(build)
    assert seen == [(str(build), False)]


@pytest.mark.skipif(not KERNELS, reason="lmpipe's kernels do not run here")
def test_packing_from_the_portable_bytes_is_packing_from_one_value_per_column():
    torch.manual_seed(1)
    weight = quantize_weight(torch.randn(64, 256), "int4")
    assert torch.equal(vnni.int4_pack_pairs(weight.values, weight.scales, weight.zeros),
                       vnni.int4_pack(weight.int4_values(), weight.scales, weight.zeros))


@pytest.mark.skipif(not KERNELS, reason="lmpipe's kernels do not run here")
def test_the_builds_int8_packing_gives_torchs_bytes(monkeypatch):
    values = torch.randint(-128, 128, (48, 96), dtype=torch.int8, generator=torch.Generator().manual_seed(2))
    built = vnni.int8_pack(values)
    monkeypatch.setattr(vnni, "_built", False)  # torch's permute and xor
    assert built.shape == (3, 24, 16, 4) and torch.equal(built, vnni.int8_pack(values))


def test_a_cpu_without_avx512_vnni_runs_the_avx2_kernels_and_the_choice_can_be_forced(monkeypatch):
    monkeypatch.setattr(vnni, "reason", vnni.reason)
    monkeypatch.setattr(vnni, "selected", vnni.selected)
    monkeypatch.setattr(vnni, "_build", lambda: None)  # the kernels' build is not what is tested here
    monkeypatch.setattr(vnni, "available", vnni.available.__wrapped__)
    monkeypatch.setattr(vnni, "_cpu_flags", lambda: {"avx", "avx2", "fma", "f16c"})  # an AVX2-only CPU
    monkeypatch.delenv(vnni.ISA_ENV, raising=False)
    assert vnni.available() and vnni.selected == "avx2"
    monkeypatch.setattr(vnni, "_torch_isa", lambda: "AVX512")
    monkeypatch.setattr(vnni, "_cpu_flags", lambda: {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"})
    assert vnni.available() and vnni.selected == "avx512"
    # torch told to run AVX2 (ATEN_CPU_CAPABILITY=avx2): inductor's code is AVX2, so are lmpipe's kernels
    monkeypatch.setattr(vnni, "_torch_isa", lambda: "AVX2")
    assert vnni.available() and vnni.selected == "avx2"
    monkeypatch.setenv(vnni.ISA_ENV, "avx512")
    assert not vnni.available() and vnni.reason == "torch itself runs at AVX2 here (ATEN_CPU_CAPABILITY), below avx512"
    monkeypatch.delenv(vnni.ISA_ENV)
    monkeypatch.setattr(vnni, "_torch_isa", lambda: "AVX512")
    monkeypatch.setenv(vnni.ISA_ENV, "avx2")
    assert vnni.available() and vnni.selected == "avx2"
    monkeypatch.setenv(vnni.ISA_ENV, "none")
    assert not vnni.available() and vnni.reason == "LMPIPE_KERNEL_ISA=none"
    monkeypatch.setattr(vnni, "_cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setenv(vnni.ISA_ENV, "avx512")
    assert not vnni.available() and vnni.reason == "the CPU lacks avx512f or avx512bw or avx512_vnni"
    monkeypatch.setenv(vnni.ISA_ENV, "sse2")
    with pytest.raises(UsageError, match="LMPIPE_KERNEL_ISA must be one of amx, avx512, avx2, none"):
        vnni.available()


def test_amx_needs_its_cpu_flags_linuxs_leave_and_a_build_with_it(monkeypatch):
    monkeypatch.setattr(vnni, "reason", vnni.reason)
    monkeypatch.setattr(vnni, "selected", vnni.selected)
    monkeypatch.setattr(vnni, "_build", lambda: None)  # the kernels' build is not what is tested here
    monkeypatch.setattr(vnni, "available", vnni.available.__wrapped__)
    monkeypatch.setattr(vnni, "_torch_isa", lambda: "AVX512")
    monkeypatch.setattr(vnni, "amx_permitted", lambda: True)
    avx512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}
    monkeypatch.setattr(vnni, "_cpu_flags", lambda: avx512 | {"amx_tile", "amx_int8", "amx_bf16"})
    monkeypatch.delenv(vnni.ISA_ENV, raising=False)
    assert vnni.runnable() == ["amx", "avx512", "avx2"] and vnni.available() and vnni.selected == "amx"
    # forced on a CPU without it: refused, with the reason in one line
    monkeypatch.setattr(vnni, "_cpu_flags", lambda: avx512)
    assert vnni.available() and vnni.selected == "avx512"
    monkeypatch.setenv(vnni.ISA_ENV, "amx")
    assert not vnni.available()
    assert vnni.reason == "the CPU lacks amx_tile or amx_int8 or avx512f or avx512bw or avx512_vnni"
    # the CPU has it, but Linux keeps the tiles' state from this process (before 5.16, or refused)
    monkeypatch.setattr(vnni, "_cpu_flags", lambda: avx512 | {"amx_tile", "amx_int8"})
    monkeypatch.setattr(vnni, "amx_permitted", lambda: False)
    assert vnni.runnable() == ["avx512", "avx2"] and not vnni.available()
    assert vnni.reason == "Linux refused this process AMX's tile state (arch_prctl ARCH_REQ_XCOMP_PERM)"
    # a compiler without AMX's intrinsics built the kernels: the others run
    monkeypatch.setattr(vnni, "amx_permitted", lambda: True)
    monkeypatch.setattr(vnni, "_amx_built", False)
    assert not vnni.available()
    assert vnni.reason == "lmpipe's kernels were built without AMX (by a compiler older than gcc 11 or clang 12)"
    monkeypatch.delenv(vnni.ISA_ENV)
    assert vnni.available() and vnni.selected == "avx512"
    # torch told to run AVX2 (ATEN_CPU_CAPABILITY=avx2): AMX's ops hold AVX-512 code
    monkeypatch.setattr(vnni, "_amx_built", True)
    monkeypatch.setattr(vnni, "_torch_isa", lambda: "AVX2")
    assert vnni.runnable() == ["avx2"]
