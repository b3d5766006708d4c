"""Quantized weights: portable on disk, packed for the running CPU, checked, and faithful to their values."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import build_tiny_llama

from lmpipe import paths
from lmpipe.engine.generation import Completion, Decoding, generate
from lmpipe.engine.sampling import Sampling
from lmpipe.errors import UsageError
from lmpipe.models import gguf
from lmpipe.models.kernels import vnni
from lmpipe.models.loading import ModelSettings, load

PROMPTS = ["The quick brown fox", "Paris is the capital of", "def add(a, b):\n    return"]


def plain_model(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def dequantized(folder, mode):
    """The float32 model whose linears hold exactly the values the quantized model computes with."""
    from lmpipe.models.quantize import layer_modes, quantizable, quantize_weight

    model, tokenizer = plain_model(folder)
    modes = layer_modes(model, [name for name, _ in model.named_modules()], mode)  # an int4 model's head is int8
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and quantizable(module, modes[name]):
            rounded = quantize_weight(module.weight, modes[name]).dequantized()
            module.weight = torch.nn.Parameter(rounded, requires_grad=False)
    if model.config.tie_word_embeddings:  # the quantized model looks its embedding up from the int8 head
        model.get_input_embeddings().weight = model.get_output_embeddings().weight
    return model, tokenizer


def greedy(model, tokenizer, prompt, n, decoding):
    done = [e for e in generate(model, tokenizer, [tokenizer(prompt).input_ids], Sampling(max_new_tokens=n),
                                decoding=decoding) if isinstance(e, Completion)]
    return list(done[0].ids)


def last_logits(model, ids, path):
    if path == "fast":
        from lmpipe.models.fastpath import FastDecoder, fast_model

        return FastDecoder(fast_model(model), torch.ones_like(ids), 1).prefill(ids)
    return model(input_ids=ids).logits[:, -1]


def packed_layers(model):
    from lmpipe.models.quantized_layers import QuantizedLinear

    return [m for m in model.modules() if isinstance(m, QuantizedLinear)]


# int8 splits float32 activations into two exact int8 products: each layer is within ~1e-4 of
# its dequantized float32 product, and the last logits within 0.5% (measured: 0.08-0.48%).
# int4 on lmpipe's VNNI kernels splits them the same way (head included): within 0.5% too. On
# torch's kernel it takes bfloat16 activations and gives bfloat16 outputs: each layer within
# ~0.3%, which 30 layers amplify to 1-3% in the last logits for most prompts; its int8 head makes
# its best logits exact. All bounds sit far below what a wrong packing gives (relative error ~1).
def exact_int8_sums() -> bool:
    """Whether this CPU's int8 matrix product sums rows of +-127 exactly (oneDNN without VNNI
    does not: ONEDNN_MAX_CPU_ISA=AVX2 shows it), asked here apart from lmpipe's own check."""
    values = torch.randint(-127, 128, (48, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    rows = torch.tensor([[127] * 64, [-127] * 64], dtype=torch.int8)
    return torch.equal(torch._int_mm(rows, values.t()), rows.int() @ values.int().t())



@pytest.mark.parametrize("mode, tolerance", [("int8", 0.02), ("int4", 0.02 if vnni.available() else 0.08)])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_the_embedded_model_quantized_computes_what_its_dequantized_weights_do(embedded, mode, tolerance, fuse):
    from lmpipe.models.quantized_layers import quantize

    if mode == "int8" and not exact_int8_sums() and not vnni.available():
        pytest.skip("this CPU's int8 sums are not exact and lmpipe's kernels cannot run: int8 takes torch's "
                    "bfloat16 kernel (test_a_cpu_whose_int8_sums_are_wrong_falls_back_to_the_bfloat16_kernel)")

    reference, tokenizer = dequantized(embedded, mode)
    model, _ = plain_model(embedded)
    quantize(model, mode, fuse=fuse)
    assert (type(model.model.layers[0].self_attn.q_proj).__name__ == "QuantizedPart") is fuse
    # int8 on the split product, or where the CPU's int8 sums are not exact on lmpipe's int8 kernel
    assert all(layer.split or (mode == "int8" and layer.vnni) for layer in packed_layers(model)) is (mode == "int8")
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = reference(input_ids=ids).logits[:, -1]
        runs = []
        for path, decoding in (("fast", Decoding("fast")), ("transformers", Decoding("dynamic"))):
            got = last_logits(model, ids, path)
            assert float((got - expected).norm() / expected.norm()) < tolerance, (path, prompt)
            runs.append(greedy(model, tokenizer, prompt, 8, decoding))
        assert runs[0] == runs[1]  # both paths run the same packed layers
        # The dequantized model's own greedy tokens. For int4 this needs its head's best logits
        # exact: on "Paris is the capital of" its 8th token wins by 0.037, finer than bfloat16's
        # 0.0625 steps near 15 (measured).
        assert runs[0] == greedy(reference, tokenizer, prompt, 8, Decoding("dynamic")), prompt


def test_the_split_int8_product_is_float32s_within_its_bound_for_every_row_count():
    from lmpipe.models.quantize import quantize_weight, split_int8_product

    if not exact_int8_sums():  # the split's bound is that of exact sums; lmpipe never splits there
        pytest.skip("this CPU's int8 sums are not exact (test_a_cpu_whose_int8_sums_are_wrong_...)")

    torch.manual_seed(0)
    weight = quantize_weight(torch.randn(96, 128), "int8")
    exact = weight.dequantized().double()
    for rows in (1, 2, 8, 33):
        x = torch.randn(rows, 128) * torch.logspace(-3, 3, 128)  # outlier-heavy rows, as residual streams have
        got = split_int8_product(x, weight.values, weight.scales.float())
        want = x.double() @ exact.t()
        assert got.dtype == torch.float32 and got.shape == (rows, 96)
        assert float((got.double() - want).norm() / want.norm()) < 1e-4, rows
    zero = torch.zeros(2, 128)  # a zero row has no step to scale by, and must not divide by zero
    assert torch.equal(split_int8_product(zero, weight.values, weight.scales.float()), torch.zeros(2, 96))


def test_a_bfloat16_model_takes_the_bfloat16_kernel_for_few_rows_and_the_split_for_many(tiny_llama_raw, monkeypatch):
    import lmpipe.models.quantized_layers as layers

    monkeypatch.setattr(vnni, "available", lambda: False)  # torch's kernels (lmpipe's AVX2 ones take int8 too)
    model, _ = plain_model(tiny_llama_raw)
    model = model.to(torch.bfloat16)
    reference = model.model.layers[0].mlp.down_proj.weight.float().clone()
    layers.quantize(model, "int8", fuse=False)
    layer = model.model.layers[0].mlp.down_proj
    ran: list[str] = []
    for name in ("kernel_product", "split_int8_product"):
        real = getattr(layers, name)
        monkeypatch.setattr(layers, name, lambda *a, _real=real, _name=name: ran.append(_name) or _real(*a))
    # Many rows: the split product where this CPU's int8 sums are exact, else a float matmul over
    # the dequantized weight; never the bfloat16 kernel.
    for rows, kernel in ((1, ["kernel_product"]), (9, ["split_int8_product"] if layer.split else [])):
        ran.clear()
        x = torch.randn(rows, layer.in_features).to(torch.bfloat16)
        got = layer(x)
        expected = x.float() @ reference.t()
        assert ran == kernel, rows
        assert got.dtype == torch.bfloat16 and float((got.float() - expected).norm() / expected.norm()) < 0.02, rows


def test_a_cpu_whose_int8_sums_are_wrong_falls_back_to_the_bfloat16_kernel(monkeypatch):
    """oneDNN without VNNI gives wrong sums for large int8 values (ONEDNN_MAX_CPU_ISA=AVX2 shows it)."""
    import lmpipe.models.quantize as q
    from lmpipe.models.quantized_layers import quantize

    real = torch._int_mm

    def saturating(a, b):  # what an int16 pair sum gives: the extreme rows come out wrong
        return real(a.clamp(-100, 100), b)

    monkeypatch.setattr(torch, "_int_mm", saturating)
    monkeypatch.setattr(q, "_checked", {})
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    model = torch.nn.Sequential(linear)
    expected = linear(x := torch.randn(3, 64))
    assert quantize(model, "int8") == 1
    assert not model[0].split and model[0].split_scales is None
    assert float((model(x) - expected).norm() / expected.norm()) < 0.03


def test_under_onednns_avx2_kernels_the_int8_product_used_is_an_exact_one():
    """The real case, in a process whose oneDNN is kept to AVX2: the split is used only where its sums are exact."""
    script = (
        "import torch\n"
        "from lmpipe.models.quantized_layers import quantize\n"
        "a = torch.full((1, 64), 127, dtype=torch.int8); b = torch.full((16, 64), -128, dtype=torch.int8)\n"
        "exact = torch.equal(torch._int_mm(a, b.t()), a.long() @ b.long().t())\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(64, 48)); x = torch.randn(3, 64)\n"
        "expected = model(x).detach()\n"
        "quantize(model, 'int8')\n"
        "error = float((model(x) - expected).norm() / expected.norm())\n"
        "print(exact, model[0].split, error < 0.03)\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    exact, split, close = out.split()
    assert split == exact and close == "True", out


def test_int4_of_the_q4_1_gguf_runs_its_own_blocks_within_one_percent_of_its_perplexity(embedded):
    """The embedded model is a Q4_1 GGUF: --quantize int4 takes its blocks as they are, and keeps the head int8."""
    from lmpipe.models import quantized_loading
    from lmpipe.models.gguf_blocks import int4_blocks
    from lmpipe.models.perplexity import perplexity, sample_text

    model, tokenizer = plain_model(embedded)
    text = sample_text()
    base = perplexity(model, tokenizer, text)  # as lm-bench --perplexity measures it
    quantized = load(ModelSettings(str(embedded), quantize="int4"))
    copy = paths.models_dir() / quantized_loading.copy_key(embedded, "int4", torch.float32)
    # every layer's q, k, v, o, gate, up, down
    assert gguf.conversion_info(copy)["gguf_blocks"] == 7 * model.config.num_hidden_layers
    assert quantized.model.lm_head.mode == "int8"
    # The blocks, in transformers' names and row order (Llama's q and k rows are permuted in the
    # file), are bit for bit the float weights transformers made of the same file.
    blocks = int4_blocks(Path(gguf.conversion_info(embedded)["source"]), model)
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.5.self_attn.k_proj", "model.layers.29.mlp.down_proj"):
        assert torch.equal(blocks[name].dequantized(), model.get_submodule(name).weight), name
        assert blocks[name].kind == "Q4_1"
    # Within 1% of the float32 model (it was +9.75% with an int4 head), and the int4 kernel's bfloat16 is most of that.
    assert abs(perplexity(quantized.model, quantized.tokenizer, text) / base - 1) < 0.01


def test_an_int4_head_is_int8_in_memory_too_and_exact_through_lmpipes_kernel(tiny_llama_raw):
    from lmpipe.models.quantized_layers import quantize

    if not vnni.available():
        pytest.skip(f"lmpipe's VNNI kernels cannot run here: {vnni.reason}")
    model, _ = plain_model(tiny_llama_raw)
    quantize(model, "int4")
    head = model.lm_head
    assert head.mode == "int8" and model.model.layers[0].mlp.down_proj.mode == "int4" and head.vnni
    weight = vnni.int8_rows(head.packed, torch.arange(head.out_features)).float() * head.packed_scales[:, None]
    for rows in (1, 9):  # one pass over the head for any rows, every logit within the split product's bound
        x = torch.randn(rows, model.config.hidden_size)
        got, exact = head(x), x.double() @ weight.double().t()
        assert float((got.double() - exact).norm() / exact.norm()) < 1e-4, rows


def test_an_int4_head_is_int8_in_memory_too(tiny_llama_raw, monkeypatch):
    """Without lmpipe's kernels (a CPU without VNNI): torch's bfloat16 kernel for few rows, its best logits
    made exact."""
    from lmpipe.models.quantized_layers import quantize

    monkeypatch.setattr(vnni, "available", lambda: False)
    model, _ = plain_model(tiny_llama_raw)
    quantize(model, "int4")
    assert model.lm_head.mode == "int8" and model.model.layers[0].mlp.down_proj.mode == "int4"
    # Decoding in bfloat16 like the int4 layers: one pass over the head, not the split's two.
    calls = []
    real = torch.ops.aten._weight_int8pack_mm
    x = torch.randn(1, model.config.hidden_size)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.ops.aten, "_weight_int8pack_mm", lambda *a: calls.append(a) or real(*a))
        got = model.lm_head(x)
        assert len(calls) == 1
        model.lm_head(torch.randn(9, model.config.hidden_size))  # many rows: the split product
        assert len(calls) == 1
    # Its 8 best logits are exact, the rest at bfloat16's resolution.
    head = model.lm_head
    exact = x @ (head.packed.float() * head.packed_scales.float()[:, None]).t()
    top = got.topk(8).indices[0]
    assert torch.allclose(got[0, top], exact[0, top], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, exact, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_the_copy_on_disk_holds_plain_values_and_every_load_packs_them_for_this_cpu(tmp_path, mode):
    from safetensors.torch import load_file

    from lmpipe.models.quantize import QuantizedWeight, pack, quantize_weight

    folder = build_tiny_llama(tmp_path / "model", chat=False)
    load(ModelSettings(str(folder), quantize=mode))
    copy = next(d for d in paths.models_dir().iterdir()
                if (gguf.conversion_info(d) or {}).get("source") == str(folder.resolve()))
    assert gguf.conversion_info(copy)["format"] == 4
    saved = load_file(str(copy / "model.safetensors"))
    assert "model.embed_tokens.weight" not in saved  # tied: the embedding is the int8 head's values
    # Nothing packed or CPU-specific: each linear is its quantized values, scales and zeros, as quantize_weight makes
    # them.
    assert not [k for k in saved if k.endswith((".weight", ".qweight")) and "proj" in k]
    source, _ = plain_model(folder)
    name = "model.layers.0.self_attn.k_proj"
    expected = quantize_weight(source.get_submodule(name).weight, mode)
    stored = QuantizedWeight.from_tensors(saved, name)
    assert torch.equal(stored.values, expected.values) and torch.equal(stored.scales, expected.scales)
    assert stored.values.dtype == (torch.int8 if mode == "int8" else torch.uint8)
    assert stored.values.shape == (expected.out_features, expected.in_features // (2 if mode == "int4" else 1))

    # Loading packs here: the running layer's buffers are what this CPU's packing of the saved values gives.
    again = load(ModelSettings(str(folder), quantize=mode))
    head = again.model.lm_head
    assert head.mode == "int8"  # int4 models keep their output head int8
    packed, scales = pack(QuantizedWeight.from_tensors(saved, "lm_head"), head.vnni)
    assert torch.equal(head.packed, packed) and torch.equal(head.packed_scales, scales)
    assert "lm_head.packed" not in again.model.state_dict()  # packed buffers are never saved
    # The tied embedding: each row the head's row dequantized, read from the head's own buffer.
    embedding = again.model.get_input_embeddings()
    assert embedding.values.data_ptr() == head.packed.data_ptr()
    ids = torch.tensor([[0, 5, 17, 42]])
    assert torch.equal(embedding(ids), QuantizedWeight.from_tensors(saved, "lm_head").dequantized()[ids])


def test_a_copy_of_another_format_is_rebuilt_not_misread(tmp_path):
    from lmpipe.models import quantized_loading

    folder = build_tiny_llama(tmp_path / "model", chat=False)
    first = load(ModelSettings(str(folder), quantize="int4"))
    target = paths.models_dir() / quantized_loading.copy_key(folder, "int4", torch.float32)
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    expected = first.model(input_ids=ids).logits
    # An older copy: torch's packed int4 buffers under the old names, and a marker without a format.
    from safetensors.torch import load_file, save_file

    from lmpipe.models.quantize import QuantizedWeight, pack

    old = {}
    for key, tensor in load_file(str(target / "model.safetensors")).items():
        if key.endswith(".qvalues"):
            name = key.removesuffix(".qvalues")
            packed = pack(QuantizedWeight.from_tensors(load_file(str(target / "model.safetensors")), name))
            old[f"{name}.qweight"], old[f"{name}.qscale"] = packed
        elif not key.endswith((".qscales", ".qzeros")):
            old[key] = tensor
    save_file(old, str(target / "model.safetensors"))
    marker = target / gguf.MARKER
    info = json.loads(marker.read_text())
    info.pop("format")
    marker.write_text(json.dumps(info))
    messages: list[str] = []
    again = load(ModelSettings(str(folder), quantize="int4"), messages.append)
    assert any("quantizing" in m for m in messages)  # detected and made again
    assert gguf.conversion_info(target)["format"] == quantized_loading.FORMAT
    assert torch.equal(again.model(input_ids=ids).logits, expected)


def test_the_copy_key_names_the_format(tmp_path, monkeypatch):
    from lmpipe.models import quantized_loading

    folder = build_tiny_llama(tmp_path / "model", chat=False)
    key = quantized_loading.copy_key(folder, "int8", torch.float32)
    monkeypatch.setattr(quantized_loading, "FORMAT", quantized_loading.FORMAT + 1)
    assert quantized_loading.copy_key(folder, "int8", torch.float32) != key


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_kernel_operands_own_aligned_memory_when_read_from_a_copy(tmp_path, mode):
    """The crash on AVX-512: the int8 kernel loads its operands with aligned loads, and tensors read
    from a safetensors file (or sliced from a fused buffer) start at any address."""
    from lmpipe.models.quantize import ALIGN, owned

    folder = build_tiny_llama(tmp_path / "model", chat=False)
    load(ModelSettings(str(folder), quantize=mode))
    lm = load(ModelSettings(str(folder), quantize=mode))  # from the copy on disk
    layers = packed_layers(lm.model)
    assert layers
    for layer in layers:
        for t in (layer.packed, layer.packed_scales):
            if t is None:  # lmpipe's int4 kernel: its scales are inside its one buffer
                continue
            assert t.is_contiguous() and t.storage_offset() == 0 and t.data_ptr() % ALIGN == 0
            assert t.untyped_storage().nbytes() == t.nbytes  # its own memory, not a view of a file or a fused buffer
    view = torch.zeros(100, dtype=torch.int8)[3:67]
    assert view.data_ptr() % ALIGN != 0 and owned(view).data_ptr() % ALIGN == 0 and torch.equal(owned(view), view)


@pytest.mark.parametrize("mode", ["int8", "int4"])  # int4: lmpipe's own kernel where the CPU has VNNI, else torch's
def test_a_kernel_that_disagrees_with_the_dequantized_weight_is_a_one_line_error(monkeypatch, mode):
    import lmpipe.models.quantize as q
    import lmpipe.models.quantized_layers as layers

    def scrambled(weight, vnni=False):  # a packing the kernel reads differently: rows in another order
        packed, scales = original(weight, vnni)
        return packed.flip(0).contiguous(), scales

    original = layers.pack
    monkeypatch.setattr(layers, "pack", scrambled)  # where the layers pack
    monkeypatch.setattr(q, "_checked", set())
    model = torch.nn.Sequential(torch.nn.Linear(64, 48))
    with pytest.raises(UsageError) as caught:
        layers.quantize(model, mode)
    message = str(caught.value)
    assert "\n" not in message and "this CPU" in message and "no --quantize" in message
    assert torch.backends.cpu.get_cpu_capability() in message


def test_only_shapes_the_kernels_take_are_quantized():
    from lmpipe.models.quantize import quantizable
    from lmpipe.models.quantized_layers import quantize

    assert not quantizable(torch.nn.Linear(24, 32), "int8")  # the AVX-512 int8 kernel steps K by 16
    assert not quantizable(torch.nn.Linear(64, 24), "int4")  # the int4 kernel's output blocks are multiples of 16
    assert quantizable(torch.nn.Linear(64, 48), "int4") and quantizable(torch.nn.Linear(48, 8), "int8")
    model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Linear(32, 24))
    assert quantize(model, "int4") == 0 and quantize(model, "int8") == 1


def test_int4_values_are_two_to_a_byte_in_row_order():
    from lmpipe.models.quantize import quantize_weight

    torch.manual_seed(0)
    weight = torch.randn(16, 64)
    q = quantize_weight(weight, "int4")
    values = q.int4_values()
    assert values.shape == (16, 64) and int(values.min()) >= 0 and int(values.max()) <= 15
    assert torch.equal(q.values[:, 0] & 0x0F, values[:, 0].to(torch.uint8))
    assert torch.equal(q.values[:, 0] >> 4, values[:, 1].to(torch.uint8))
    assert float((q.dequantized() - weight).abs().max()) < 0.5 * float((weight.amax() - weight.amin()) / 15) + 0.05


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="torch.compile on a CPU builds C++ kernels")
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_the_compiled_quantized_step_has_no_graph_break_and_matches_eager(tiny_llama_raw, mode):
    """--quantize with --compile: the eager path's alignment check (and int4's refined head) must not split
    the compiled step."""
    from torch._dynamo.utils import counters

    from lmpipe.models.fastpath import FastDecoder, fast_model
    from lmpipe.models.quantized_layers import quantize

    model, _ = plain_model(tiny_llama_raw)
    quantize(model, mode)
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    eager, compiled = (FastDecoder(fast_model(model), torch.ones_like(ids), 4, c) for c in (False, True))
    token = eager.prefill(ids).argmax(-1)
    compiled.prefill(ids)
    counters.clear()
    for _ in range(2):
        a, b = eager.step(token), compiled.step(token)
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
        token = a.argmax(-1)
    assert not counters["graph_break"]


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_gguf_blocks_dequantize_as_gguf_py_does_and_become_the_same_int4_values(kind):
    """Q4_0 (no GGUF of that kind ships here) and Q4_1 blocks made by gguf-py's own quantizer."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    from lmpipe.models.gguf_blocks import Int4Blocks

    x = np.random.RandomState(0).randn(48, 96).astype(np.float32)
    data = quants.quantize(x, GGMLQuantizationType[kind])
    order = np.arange(48)[::-1].copy()  # a reordering of rows, as Llama's q and k get
    blocks = Int4Blocks(kind, data, order)
    expected = torch.from_numpy(quants.dequantize(data, GGMLQuantizationType[kind]))[torch.from_numpy(order)]
    assert torch.equal(blocks.dequantized(), expected)  # bit for bit
    weight = blocks.weight()
    assert weight.mode == "int4" and weight.values.shape == (48, 48) and weight.scales.shape == (48, 3)
    # The same values; only the scales and zeros are rounded to bfloat16, as the kernel takes them.
    nibbles = torch.from_numpy(data[order].reshape(48, 3, -1)[..., -16:].copy())  # each block's last 16 bytes
    file_values = torch.cat([nibbles & 15, nibbles >> 4], dim=-1).reshape(48, 96)  # weight j low, j + 16 high
    assert torch.equal(weight.int4_values(), file_values.int())
    assert float((weight.dequantized() - expected).abs().max()) < 0.02 * float(expected.abs().max())
