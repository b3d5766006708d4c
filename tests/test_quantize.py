"""Quantized weights: portable on disk, packed for the running CPU, checked, and faithful to their values."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lmpipe import paths
from lmpipe.models import gguf
from lmpipe.errors import UsageError
from lmpipe.engine.generation import Completion, Decoding, generate
from lmpipe.models.loading import ModelSettings, load
from lmpipe.engine.sampling import Sampling

from tiny_models import build_tiny_llama

PROMPTS = ["The quick brown fox", "Paris is the capital of", "def add(a, b):\n    return"]


def plain_model(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def dequantized(folder, mode):
    """The float32 model whose linears hold exactly the values the quantized model computes with."""
    from lmpipe.models.quantize import quantizable, quantize_weight

    model, tokenizer = plain_model(folder)
    for module in list(model.modules()):
        if isinstance(module, torch.nn.Linear) and quantizable(module, mode):
            # A new Parameter: a tied head must not change the embedding, which stays float in the quantized model.
            module.weight = torch.nn.Parameter(quantize_weight(module.weight, mode).dequantized(), requires_grad=False)
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
    from lmpipe.models.quantize import quantized_linear_class

    return [m for m in model.modules() if isinstance(m, quantized_linear_class())]


# The kernels take bfloat16 activations and give bfloat16 outputs: each layer is within ~0.3% of
# its dequantized float32 product, and 30 layers amplify that to 1-3% in the last logits for most
# prompts; for int8 on "The quick brown fox", 10% (measured). The bounds sit above that floor and
# far below what a wrong packing gives (relative error ~1).
@pytest.mark.parametrize("mode, tolerance", [("int8", 0.12), ("int4", 0.08)])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_the_embedded_model_quantized_computes_what_its_dequantized_weights_do(embedded, mode, tolerance, fuse):
    from lmpipe.models.quantize import quantize

    reference, tokenizer = dequantized(embedded, mode)
    model, _ = plain_model(embedded)
    quantize(model, mode, fuse=fuse)
    assert (type(model.model.layers[0].self_attn.q_proj).__name__ == "QuantizedPart") is fuse
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        expected = reference(input_ids=ids).logits[:, -1]
        runs = []
        for path, decoding in (("fast", Decoding("fast")), ("transformers", Decoding("dynamic"))):
            got = last_logits(model, ids, path)
            assert float((got - expected).norm() / expected.norm()) < tolerance, (path, prompt)
            runs.append(greedy(model, tokenizer, prompt, 8, decoding))
        assert runs[0] == runs[1]  # both paths run the same packed layers
        # Each greedy token is the dequantized model's own choice, given the same text so far; where
        # the two differ (2 of 24 tokens, measured) it is a tie at bfloat16's resolution.
        tokens = runs[0]
        scores = reference(input_ids=torch.tensor([ids[0].tolist() + tokens])).logits[0, ids.shape[1] - 1:-1]
        gaps = [float(scores[i].max() - scores[i, t]) for i, t in enumerate(tokens)]
        assert max(gaps) < 0.1, (prompt, gaps)
        assert sum(gap > 0 for gap in gaps) <= 1, (prompt, gaps)


def test_int4_perplexity_is_within_ten_percent_of_float32(embedded):
    from lmpipe.models.perplexity import perplexity, sample_text
    from lmpipe.models.quantize import quantize

    model, tokenizer = plain_model(embedded)
    text = sample_text()
    base = perplexity(model, tokenizer, text)  # as lm-bench --perplexity measures it
    quantize(model, "int4")
    assert abs(perplexity(model, tokenizer, text) / base - 1) < 0.10


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_the_copy_on_disk_holds_plain_values_and_every_load_packs_them_for_this_cpu(tmp_path, mode):
    from safetensors.torch import load_file

    from lmpipe.models.quantize import QuantizedWeight, pack, quantize_weight

    folder = build_tiny_llama(tmp_path / "model", chat=False)
    load(ModelSettings(str(folder), quantize=mode))
    copy = next(d for d in paths.models_dir().iterdir()
                if (gguf.conversion_info(d) or {}).get("source") == str(folder.resolve()))
    assert gguf.conversion_info(copy)["format"] == 2
    saved = load_file(str(copy / "model.safetensors"))
    # Nothing packed or CPU-specific: each linear is its quantized values, scales and zeros, as quantize_weight makes them.
    assert not [k for k in saved if k.endswith((".weight", ".qweight")) and "proj" in k]
    source, _ = plain_model(folder)
    name = "model.layers.0.self_attn.k_proj"
    expected = quantize_weight(source.get_submodule(name).weight, mode)
    stored = QuantizedWeight.from_tensors(mode, saved, name)
    assert torch.equal(stored.values, expected.values) and torch.equal(stored.scales, expected.scales)
    assert stored.values.dtype == (torch.int8 if mode == "int8" else torch.uint8)
    assert stored.values.shape == (expected.out_features, expected.in_features // (2 if mode == "int4" else 1))

    # Loading packs here: the running layer's buffers are what this CPU's packing of the saved values gives.
    again = load(ModelSettings(str(folder), quantize=mode))
    head = again.model.lm_head
    packed, scales = pack(QuantizedWeight.from_tensors(mode, saved, "lm_head"))
    assert torch.equal(head.packed, packed) and torch.equal(head.packed_scales, scales)
    assert "lm_head.packed" not in again.model.state_dict()  # packed buffers are never saved


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
            packed = pack(QuantizedWeight.from_tensors("int4", load_file(str(target / "model.safetensors")), name))
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
            assert t.is_contiguous() and t.storage_offset() == 0 and t.data_ptr() % ALIGN == 0
            assert t.untyped_storage().nbytes() == t.nbytes  # its own memory, not a view of a file or a fused buffer
    view = torch.zeros(100, dtype=torch.int8)[3:67]
    assert view.data_ptr() % ALIGN != 0 and owned(view).data_ptr() % ALIGN == 0 and torch.equal(owned(view), view)


def test_a_kernel_that_disagrees_with_the_dequantized_weight_is_a_one_line_error(monkeypatch):
    import lmpipe.models.quantize as q

    def scrambled(weight):  # a packing the kernel reads differently: rows in another order
        packed, scales = original(weight)
        return packed.flip(0).contiguous(), scales

    original = q.pack
    monkeypatch.setattr(q, "pack", scrambled)
    monkeypatch.setattr(q, "_checked", set())
    model = torch.nn.Sequential(torch.nn.Linear(64, 48))
    with pytest.raises(UsageError) as caught:
        q.quantize(model, "int8")
    message = str(caught.value)
    assert "\n" not in message and "this CPU" in message and "no --quantize" in message
    assert torch.backends.cpu.get_cpu_capability() in message


def test_only_shapes_the_kernels_take_are_quantized():
    from lmpipe.models.quantize import quantizable, quantize

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
def test_the_compiled_quantized_step_has_no_graph_break_and_matches_eager(tiny_llama_raw):
    """--quantize with --compile: the eager path's alignment check must not split the compiled step."""
    from torch._dynamo.utils import counters

    from lmpipe.models.fastpath import FastDecoder, fast_model
    from lmpipe.models.quantize import quantize

    model, _ = plain_model(tiny_llama_raw)
    quantize(model, "int8")
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
