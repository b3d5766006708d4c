"""A GGUF's tensors on lmpipe's layers: each type against gguf-py's dequantized values, whole
models against transformers on the dequantized file, and no float32 model at any point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_gguf import Q4_K_M, encode, write_tiny_llama_gguf

from lmpipe.models import gguf
from lmpipe.models.gguf_weights import own_scales_run
from lmpipe.models.kernels import vnni
from lmpipe.models.loading import ModelSettings, load

INT4_TYPES = ("Q4_0", "Q4_1", "Q4_K")
INT8_TYPES = ("Q5_0", "Q5_1", "Q5_K", "Q6_K", "Q8_0")
Q4_K_MODE = "q4k" if own_scales_run() else "int4"  # on its own scales where lmpipe's kernels run (without AMX)
# Bounds, relative (Frobenius) to the product with the file's dequantized weight, of one layer's
# product: int4 keeps the file's values but its scale and zero in bfloat16 (measured ~1.7e-3);
# int8 types are int8 per output row (measured ~8e-3).
INT4_PRODUCT_BOUND = 3e-3
INT8_PRODUCT_BOUND = 1.2e-2
EXACT_KINDS = ("Q4_0", "Q4_1", "F16")  # the file's values exactly: the same greedy tokens
NEAR_TIE = 0.03  # of a step's largest logit: the int8 layers' bound (INT8_PRODUCT_BOUND) through two layers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ggufs")
    made = {kind: write_tiny_llama_gguf(folder / f"tiny-{kind}.gguf", kind)
            for kind in (*INT4_TYPES, "Q5_K", "Q6_K", "Q8_0", "F16", "TQ2_0")}
    made["Q4_K_M"] = write_tiny_llama_gguf(folder / "tiny-Q4_K_M.gguf", "Q4_K", Q4_K_M)
    # Untied, as Llama 3 8B and Llama 2 are: its own Q6_K output, a Q4_K token embedding.
    made["Q4_K_M-untied"] = write_tiny_llama_gguf(folder / "tiny-Q4_K_M-untied.gguf", "Q4_K",
                                                  {**Q4_K_M, "token_embd": "Q4_K", "output": "Q6_K"}, tied=False)
    # Its embedding as Q6_K, the int8 form (Q4_K_M's mix gives some files' embeddings more bits).
    made["Q6_K-untied"] = write_tiny_llama_gguf(folder / "tiny-Q6_K-untied.gguf", "Q4_K",
                                                {**Q4_K_M, "token_embd": "Q6_K", "output": "Q6_K"}, tied=False)
    return made


def _reference(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


@pytest.mark.parametrize("kind", INT4_TYPES + INT8_TYPES)
def test_each_type_gives_the_files_values_within_its_bound(kind):
    import numpy as np
    import torch

    from lmpipe.models.gguf_weights import gguf_dequantized, int4_weight, int8_weight
    from lmpipe.models.quantized_layers import QuantizedLinear

    rng = np.random.default_rng(0)
    data = encode(kind, (rng.standard_normal((64, 512)) * 0.05).astype(np.float32), 1)
    order = np.arange(64)[::-1].copy()  # rows taken in another order, as Llama's q and k are
    reference = gguf_dequantized(kind, data)[torch.from_numpy(order)]
    weight = (int4_weight if kind in INT4_TYPES else int8_weight)(kind, data, order)
    assert weight.mode == ("int4" if kind in INT4_TYPES else "int8")
    values = weight.dequantized()
    if kind in INT4_TYPES:
        # The file's q, d and minimum exactly; only scale and zero are rounded to bfloat16 (2^-8 relative each: 8
        # significant bits).
        scale = weight.scales.float().repeat_interleave(32, dim=1)
        zero = weight.zeros.float().repeat_interleave(32, dim=1)
        assert torch.all((values - reference).abs() <= 2 ** -8 * (8 * scale.abs() + zero.abs()) * 1.01 + 1e-7)
    else:
        steps = weight.scales.float()[:, None]  # per row: max|row| / 127
        assert torch.all((values - reference).abs() <= steps * 0.5 * 1.01 + steps * 2 ** -8 * 128)
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(0))
    got, want = QuantizedLinear(weight)(x), x @ reference.t()
    error = float((got - want).norm() / want.norm())
    assert error < (INT4_PRODUCT_BOUND if kind in INT4_TYPES else INT8_PRODUCT_BOUND), error


@pytest.mark.skipif(not vnni.available(), reason="lmpipe's kernels (and their build's conversions) do not run here")
# Q4_K: d and dmin per row and 256 columns, 6-bit scales and minimums; Q4_0: a float16 d per 32
@pytest.mark.parametrize(("kind", "mode", "width", "bits"), [("Q4_K", "q4k", 768, 4.625), ("Q4_0", "q4_0", 96, 4.5)])
@pytest.mark.parametrize("rows", [1, 5, 16, 17, 40])
def test_a_4_bit_type_on_its_own_scales_is_the_files_values_exactly_in_its_size(rows, kind, mode, width, bits):
    import numpy as np
    import torch

    from lmpipe.models import gguf_weights as weights
    from lmpipe.models.kernels import choice
    from lmpipe.models.quantize import EXACT_TOLERANCE, QuantizedWeight, pack, product

    rng = np.random.default_rng(5)
    data = encode(kind, (rng.standard_normal((48, width)) * 0.05).astype(np.float32), 6)
    order = rng.permutation(48)
    reference = weights.gguf_dequantized(kind, data)[torch.from_numpy(order)]
    weight = weights.q4k_weight(data, order) if mode == "q4k" else weights.q4_0_weight(data, order)
    assert weight.mode == mode and torch.equal(weight.dequantized(), reference)  # gguf-py's floats, bit for bit
    saved = QuantizedWeight.from_tensors(weight.tensors("w"), "w")  # both float16-scaled: told apart by q4k's zeros
    assert saved.mode == mode and torch.equal(saved.dequantized(), reference)
    packed, scales = pack(weight, vnni=True)
    assert scales is None and packed.numel() * 8 == 48 * width * bits
    assert torch.equal(choice.dequantized(mode, packed, None, 48), reference)
    x = torch.randn(rows, width, generator=torch.Generator().manual_seed(rows))
    want = x.double() @ reference.double().t()
    for isa in vnni.runnable():  # amx runs avx512's code
        got = product(mode, x, packed, None, 48, isa).double()
        assert float((got - want).norm() / want.norm()) < EXACT_TOLERANCE / 10, isa


@pytest.mark.skipif(not vnni.available(), reason="lmpipe's kernels (and their build's conversions) do not run here")
def test_a_q4k_kernel_that_reads_its_layout_wrong_is_refused_in_one_line(monkeypatch):
    import numpy as np
    import torch

    from lmpipe.errors import UsageError
    from lmpipe.models import gguf_weights as weights
    from lmpipe.models import quantize

    rng = np.random.default_rng(7)
    weight = weights.q4k_weight(encode("Q4_K", (rng.standard_normal((32, 1280)) * 0.05).astype(np.float32), 8),
                                np.arange(32))
    packed, scales = quantize.pack(weight, vnni=True)
    monkeypatch.setattr(vnni, "q4k_product", lambda x, packed, n, isa=None, parts=2: torch.zeros(x.shape[0], n))
    monkeypatch.setattr(quantize, "_checked", {})
    with pytest.raises(UsageError, match=r"^a GGUF's q4k tensors: lmpipe's kernel gives wrong products on this CPU "
                                         r"\(.*; relative error 1 for a 32x1280 weight\); "
                                         r"LMPIPE_KERNEL_ISA=none runs torch's kernels instead$"):
        quantize.check_kernel(weight, packed, scales, vnni=True)


@pytest.mark.skipif(not vnni.available(), reason="lmpipe's kernels (and their build's conversions) do not run here")
@pytest.mark.parametrize(("kind", "mode"), [*((kind, "int4") for kind in INT4_TYPES),
                                            *((kind, "int8") for kind in INT4_TYPES + INT8_TYPES)])
def test_the_builds_conversion_gives_numpys_values_bit_for_bit(kind, mode):
    import numpy as np
    import torch

    from lmpipe.models import gguf_weights as weights

    rng = np.random.default_rng(3)
    data = encode(kind, (rng.standard_normal((48, 512)) * 0.05).astype(np.float32), 4)
    data = np.concatenate([data, data[:16]])  # 64 rows: rows repeated, then taken in a shuffled order
    order = rng.permutation(64)
    # int8 from an int4 type: a tied output head of that type
    native = (weights.int4_weight if mode == "int4" else weights.int8_weight)(kind, data, order)
    numpy = (weights.int4_weight_numpy if mode == "int4" else weights.int8_weight_numpy)(kind, data, order)
    assert native.mode == numpy.mode
    for got, want in zip(native.tensors("w").values(), numpy.tensors("w").values(), strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q4_K", "F16", "Q4_K_M"])
def test_greedy_tokens_equal_transformers_on_the_dequantized_file(files, kind):
    import torch

    lm = load(ModelSettings(str(files[kind])))
    reference = _reference(files[kind])
    ids = lm.tokenizer("The quick brown fox", return_tensors="pt").input_ids
    got = lm.model.generate(ids, max_new_tokens=12, do_sample=False)
    if kind in EXACT_KINDS:
        assert got.tolist() == reference.generate(ids, max_new_tokens=12, do_sample=False).tolist()
    else:
        # Q4_K's scale and zero are bfloat16 and a mix's Q6_K layers int8, so a near tie may go the
        # other way: each of lmpipe's tokens is the reference's best on the same prefix, or within
        # NEAR_TIE of it (relative to that step's largest logit).
        logits = reference(got).logits[0, ids.shape[1] - 1:-1]
        chosen = logits.gather(1, got[0, ids.shape[1]:, None])[:, 0]
        gaps = (logits.max(dim=1).values - chosen) / logits.abs().amax(dim=1)
        assert float(gaps.max()) <= NEAR_TIE, gaps.tolist()
        assert int((gaps == 0).sum()) >= len(gaps) - 2, gaps.tolist()
    assert not any(isinstance(m, torch.nn.Linear) for m in lm.model.modules()) or kind == "F16"


@pytest.mark.parametrize(("file", "kind", "mode", "bound"), [("Q4_K_M-untied", "Q4_K", Q4_K_MODE, INT4_PRODUCT_BOUND),
                                                             ("Q6_K-untied", "Q6_K", "int8", INT8_PRODUCT_BOUND)])
def test_an_untied_embedding_stays_the_files_blocks_and_is_looked_up_from_them(files, file, kind, mode, bound):
    import torch

    from lmpipe.models.quantized_layers import PortableEmbedding

    lm = load(ModelSettings(str(files[file])))
    reference = _reference(files[file])
    table = lm.model.get_input_embeddings()
    assert isinstance(table, PortableEmbedding) and table.mode == mode
    vocab, hidden = table.num_embeddings, table.embedding_dim
    # No float copy of the table anywhere in the model: the file's blocks only.
    assert not any(t.is_floating_point() and tuple(t.shape) == (vocab, hidden)
                   for t in [*lm.model.parameters(), *lm.model.buffers()])
    assert lm.identity["gguf_tensors"][kind][mode] >= 1
    every = torch.arange(vocab)
    got, want = table(every), reference.get_input_embeddings()(every)
    assert float((got - want).norm() / want.norm()) < bound  # as a layer's of its form
    ids = lm.tokenizer("The quick brown fox jumps", return_tensors="pt").input_ids
    logits, wanted = lm.model(ids).logits, reference(ids).logits
    assert float((logits - wanted).norm() / wanted.norm()) < 0.05  # as the int8 types' (a Q6_K head, Q6_K layers)
    # The next load maps the packed copy, the table in it as the same blocks.
    again = load(ModelSettings(str(files[file])))
    if vnni.available():
        assert again.identity.get("packing") == "mapped"
    assert isinstance(again.model.get_input_embeddings(), PortableEmbedding)
    assert torch.equal(again.model.get_input_embeddings()(every), got)


@pytest.mark.parametrize("kind", ["Q5_K", "Q6_K", "Q8_0"])
def test_int8_types_logits_stay_near_the_dequantized_files(files, kind):
    lm = load(ModelSettings(str(files[kind])))
    reference = _reference(files[kind])
    ids = lm.tokenizer("The quick brown fox jumps", return_tensors="pt").input_ids
    got, want = lm.model(ids).logits, reference(ids).logits
    # Every layer's bound (INT8_PRODUCT_BOUND), through two layers and the head of a random model.
    assert float((got - want).norm() / want.norm()) < 0.05


def test_the_manifest_counts_each_types_tensors_by_kernel(files):
    lm = load(ModelSettings(str(files["Q4_K_M"])))
    # Per layer q, k, o, gate, up are Q4_K; v and down Q6_K; the tied head is the Q6_K embedding; norms F32.
    assert lm.identity["gguf_tensors"] == {"F32": {"float": 5}, "Q4_K": {Q4_K_MODE: 10}, "Q6_K": {"int8": 5}}
    assert lm.identity["int4_kernel"] in ("lmpipe-amx", "lmpipe-vnni", "lmpipe-avx2", "torch")
    assert set(lm.identity.get("kernels", {})) <= {"1", "4", "16", "prompt"}  # the choice per range, where measured
    assert "quantize" not in lm.identity


def test_quantize_on_a_gguf_applies_to_its_float_tensors_only(files):
    f16 = load(ModelSettings(str(files["F16"]), quantize="int8"))
    assert f16.identity["gguf_tensors"] == {"F16": {"int8": 15}, "F32": {"float": 5}}
    q4 = load(ModelSettings(str(files["Q4_K"]), quantize="int8"))
    assert q4.identity["gguf_tensors"]["Q4_K"] == {Q4_K_MODE: 14, "int8": 1}  # the file's blocks, its tied head int8


def test_an_unknown_type_is_dequantized_alone_and_said_once(files):
    messages = []
    lm = load(ModelSettings(str(files["TQ2_0"])), notify=messages.append)
    said = [m for m in messages if "no kernel" in m]
    assert len(said) == 1 and "TQ2_0" in said[0]
    assert lm.identity["gguf_tensors"] == {"F32": {"float": 5}, "TQ2_0": {"float": 15}}
    reference = _reference(files["TQ2_0"])
    ids = lm.tokenizer("The quick", return_tensors="pt").input_ids
    assert lm.model.generate(ids, max_new_tokens=6, do_sample=False).tolist() == \
        reference.generate(ids, max_new_tokens=6, do_sample=False).tolist()


def test_the_cache_keeps_a_description_not_a_float_copy(files):
    from lmpipe import paths

    path = files["Q4_K"]
    messages = []
    load(ModelSettings(str(path)), notify=messages.append)
    load(ModelSettings(str(path)), notify=messages.append)
    assert len([m for m in messages if "config and tokenizer" in m]) <= 1  # described once, then read
    folder = gguf.described_folder(path)
    assert gguf.conversion_info(folder)["weights"] == "read from the source GGUF"
    assert not gguf.converted_folder(path).exists()
    assert not list(paths.models_dir().rglob(f"{path.stem}*/*.safetensors"))
    cached = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert cached < path.stat().st_size


PEAK_SCRIPT = """
import sys
from pathlib import Path
import torch, transformers
from lmpipe.models.loading import ModelSettings, load

def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))

load(ModelSettings(sys.argv[2]))  # the description built and the kernels compiled: not this test's concern
import gc; gc.collect()
before = kib("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # the peak counts from here
lm = load(ModelSettings(sys.argv[1]))
print((kib("VmHWM:") - before) * 1024)
"""


def test_loading_a_wide_q4_k_file_never_holds_its_float32_model(tmp_path):
    """A tiny-but-wide Q4_K model: its float32 weights are over 7x its file; the load's peak stays near the file."""
    wide = write_tiny_llama_gguf(tmp_path / "wide.gguf", "Q4_K", hidden=1024, intermediate=8192, layers=2)
    warm = write_tiny_llama_gguf(tmp_path / "warm.gguf", "Q4_K", seed=1)
    float32_bytes = 4 * (2 * (3 * 1024 * 8192 + 2 * 1024 * 1024 + 2 * 512 * 1024) + 400 * 1024)
    size = wide.stat().st_size
    assert float32_bytes > 7 * size
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(wide), str(warm)], capture_output=True, text=True,
                         env=dict(os.environ), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    peak = int(out.stdout.split()[-1])
    assert peak < float32_bytes / 2, (peak, float32_bytes)
    if vnni.available():  # torch's int4 packing (elsewhere) takes one int32 per weight of a tensor at a time
        # The mapped file, the packed layers (about the file again) and one slice's temporaries.
        assert peak < 3 * size + 32 * 2 ** 20, (peak, size)


def test_dequantize_asks_for_transformers_float32_conversion_lm_benchs_reference(tmp_path):
    import torch

    path = write_tiny_llama_gguf(tmp_path / "reference.gguf", "Q4_1", seed=3)  # not a file the cache test checks
    lm = load(ModelSettings(str(path), dequantize=True))
    assert "gguf_tensors" not in lm.identity
    assert all(isinstance(m, torch.nn.Linear) for m in (lm.model.model.layers[0].self_attn.q_proj, lm.model.lm_head))
    assert gguf.conversion_info(gguf.converted_folder(path)) is not None
