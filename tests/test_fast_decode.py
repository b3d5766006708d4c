"""The fast decode path: lmpipe's own forward, static KV cache, weight-only int8/int4, perplexity."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner

from lmpipe.engine.generation import Completion, Decoding, generate
from lmpipe.engine.sampling import Sampling
from lmpipe.errors import UsageError
from lmpipe.models.perplexity import perplexity, sample_text
from lmpipe.models.quantized_layers import quantize

PROMPTS = ["The quick brown fox", "Paris is the capital of", "def add(a, b):\n    return"]


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def reference(model, tokenizer, prompts, n):
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[:, enc.input_ids.shape[1]:].tolist()


def ours(model, tokenizer, prompts, n, decoding):
    ids = [tokenizer(p).input_ids for p in prompts]
    done = [e for e in generate(model, tokenizer, ids, Sampling(max_new_tokens=n), decoding=decoding)
            if isinstance(e, Completion)]
    return [list(c.ids) for c in sorted(done, key=lambda c: c.row)]


def same_tokens(expected, got, tokenizer):
    """Every row whole: transformers pads a finished row (with its pad or end-of-sequence token)
    where ours stops at its end of sequence, and nothing else may differ."""
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    for row_expected, row_got in zip(expected, got, strict=True):
        assert row_got and row_got == row_expected[: len(row_got)]
        assert set(row_expected[len(row_got):]) <= ends, (row_expected, row_got)


@pytest.mark.parametrize("cache", ["fast", "dynamic", "static"])
def test_greedy_is_token_identical_to_transformers_on_tiny_llama(tiny_llama_raw, cache):
    model, tokenizer = load(tiny_llama_raw)
    expected = reference(model, tokenizer, PROMPTS, 20)
    same_tokens(expected, ours(model, tokenizer, PROMPTS, 20, Decoding(cache)), tokenizer)


@pytest.mark.parametrize("cache", ["fast", "static"])
def test_fast_paths_are_token_identical_on_the_embedded_model(embedded, cache):
    model, tokenizer = load(embedded)
    # One at a time and as a left-padded batch: padding must not change a row's tokens.
    for prompts in ([PROMPTS[1]], PROMPTS):
        same_tokens(reference(model, tokenizer, prompts, 16), ours(model, tokenizer, prompts, 16, Decoding(cache)),
                    tokenizer)


def test_fast_path_is_the_default_for_llama_and_falls_back_for_others(tiny_llama_raw):
    from lmpipe.engine.decoding import uses_fast_path
    from lmpipe.models.fastpath import unsupported

    model, _ = load(tiny_llama_raw)
    assert Decoding().cache == "auto" and uses_fast_path(model, Decoding())
    assert not uses_fast_path(model, Decoding("dynamic"))
    other = type("Other", (), {"config": type("C", (), {"model_type": "gpt2"})()})()
    assert "gpt2" in unsupported(other)


def test_compile_needs_fixed_shapes():
    with pytest.raises(UsageError, match="--cache fast or static"):
        Decoding("dynamic", compile=True)
    with pytest.raises(UsageError):
        Decoding("paged")


@pytest.mark.parametrize("mode, tolerance", [("int8", 0.01), ("int4", 0.15)])
def test_quantized_linear_is_close_to_float(mode, tolerance):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32, bias=False))
    x = torch.randn(5, 64)
    expected = model(x)
    assert quantize(model, mode) == 2
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    got = model(x)
    assert ((got - expected).norm() / expected.norm()) < tolerance


def test_quantize_refuses_what_it_cannot_do():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(UsageError):
        quantize(model, "int3")
    with pytest.raises(UsageError, match="--device cpu"):
        quantize(model, "int8", device="cuda")


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_fast_path_fuses_projections_and_matches_the_unfused_model(tiny_llama_raw, mode):
    from lmpipe.models.fastpath import FastModel

    model, tokenizer = load(tiny_llama_raw)
    quantize(model, mode)
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    before = model(input_ids=ids).logits[:, -1]
    fast = FastModel(model)  # q/k/v and gate/up were fused when packed: the fast path runs the fused layers
    assert fast.layers[0].qkv.quantized.out_features == model.config.hidden_size + 2 * (
        model.config.num_key_value_heads * model.config.hidden_size // model.config.num_attention_heads)
    attn = model.model.layers[0].self_attn
    # The parts hold no weights of their own (no packed buffer is ever sliced): they are the fused layer's columns.
    assert attn.k_proj.fused is fast.layers[0].qkv.quantized and not list(attn.k_proj.buffers(recurse=False))
    q, k = attn.q_proj.out_features, attn.k_proj.out_features
    assert (attn.k_proj.start, attn.k_proj.end) == (q, q + k)
    assert torch.allclose(model(input_ids=ids).logits[:, -1], before)  # the model itself is unchanged
    from lmpipe.models.fastpath import FastDecoder

    mask = torch.ones_like(ids)
    got = FastDecoder(fast, mask, 4).prefill(ids)
    assert ((got - before).norm() / before.norm()) < 0.02
    # The fused layers (fast path) and their parts (transformers' forward over the same quantized model).
    fused = ours(model, tokenizer, PROMPTS, 8, Decoding("fast"))
    same_tokens(ours(model, tokenizer, PROMPTS, 8, Decoding("dynamic")), fused, tokenizer)


def test_int8_perplexity_is_within_two_percent_of_float32(embedded):
    model, tokenizer = load(embedded)
    text = sample_text()
    assert text.startswith("It is a truth universally acknowledged")
    base, windowed = perplexity(model, tokenizer, text), perplexity(model, tokenizer, text, window=128)
    assert 1 < base < 100
    quantize(model, "int8")
    assert abs(perplexity(model, tokenizer, text) / base - 1) < 0.02
    assert abs(perplexity(model, tokenizer, text, window=128) / windowed - 1) < 0.02


def test_lm_generate_fast_path_writes_the_same_text_and_records_quantize(tiny_llama_raw):
    from lmpipe.bin.generate import main

    def run(*args):
        result = CliRunner().invoke(main, ["-m", str(tiny_llama_raw), "-n", "10", *args],
                                    input="The quick brown fox\n", catch_exceptions=False)
        assert result.exit_code == 0, result.output
        import orjson

        return orjson.loads(result.stdout.splitlines()[-1])

    plain, fast = run(), run("--cache", "static")
    assert fast["generated"] == plain["generated"]
    assert "quantize" not in fast["manifest"]
    assert run("--quantize", "int8")["manifest"]["quantize"] == "int8"


@pytest.mark.parametrize("every", [False, True])
def test_a_long_prompt_prefilled_in_passes_gives_one_passs_logits_and_cache(tiny_llama_raw, monkeypatch, every):
    from lmpipe.models import fastpath

    model, tokenizer = load(tiny_llama_raw)
    fast = fastpath.fast_model(model)
    ids = torch.tensor([tokenizer(" ".join(PROMPTS)).input_ids])
    passes = []
    one_pass = fastpath._prefill_pass
    monkeypatch.setattr(fastpath, "_prefill_pass", lambda *a, **k: passes.append(a[3].shape[1]) or one_pass(*a, **k))

    def prefilled(chunk):
        monkeypatch.setattr(fastpath, "PREFILL_CHUNK", chunk)
        cache = fast.cache(1, ids.shape[1] + 4)
        return fastpath.prefill(fast, cache, slice(0, 1), ids, torch.ones_like(ids), every=every), cache

    whole, whole_cache = prefilled(ids.shape[1])
    assert passes == [ids.shape[1]]
    passes.clear()
    split, split_cache = prefilled(7)
    assert passes == [7] * (ids.shape[1] // 7) + ([ids.shape[1] % 7] if ids.shape[1] % 7 else [])
    assert len(passes) >= 3
    assert split.shape == whole.shape and torch.allclose(split, whole, atol=1e-5)
    for a, b in zip(whole_cache.keys + whole_cache.values, split_cache.keys + split_cache.values, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    for name in ("valid", "fill", "position"):
        assert torch.equal(getattr(whole_cache, name), getattr(split_cache, name)), name


def test_greedy_after_a_prompt_prefilled_in_passes_is_transformers_own(tiny_llama_raw, monkeypatch):
    from lmpipe.models import fastpath

    monkeypatch.setattr(fastpath, "PREFILL_CHUNK", 5)
    model, tokenizer = load(tiny_llama_raw)
    prompt = " ".join(PROMPTS)
    assert len(tokenizer(prompt).input_ids) > 3 * 5
    same_tokens(reference(model, tokenizer, [prompt], 12), ours(model, tokenizer, [prompt], 12, Decoding("fast")),
                tokenizer)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="torch.compile on a CPU builds C++ kernels")
def test_compiled_fast_step_gives_the_eager_steps_logits(tiny_llama_raw):
    from lmpipe.models.fastpath import FastDecoder, fast_model

    model, tokenizer = load(tiny_llama_raw)
    ids = torch.tensor([tokenizer(PROMPTS[0]).input_ids])
    mask = torch.ones_like(ids)
    eager, compiled = (FastDecoder(fast_model(model), mask, 6, c) for c in (False, True))
    assert compiled.cache.width == 256  # widths come in steps, so a new prompt length rarely recompiles
    a, b = eager.prefill(ids), compiled.prefill(ids)
    for _ in range(6):
        assert torch.allclose(a, b, atol=1e-4)
        token = a.argmax(-1)  # both are fed the same tokens
        a, b = eager.step(token), compiled.step(token)
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="torch.compile on a CPU builds C++ kernels")
def test_the_compiled_step_gives_each_model_its_own_logits(tiny_llama_raw):
    """The compiled step checks few guards on the model (fastpath._step_guards): a model of the
    same shapes with other weights must still read its own, one with another eps must compile anew."""
    from lmpipe.models.fastpath import FastDecoder, fast_model

    first, tokenizer = load(tiny_llama_raw)
    heavier, _ = load(tiny_llama_raw)
    heavier.model.layers[1].mlp.down_proj.weight.mul_(3)
    smoother, _ = load(tiny_llama_raw)
    for block in smoother.model.layers:
        block.input_layernorm.variance_epsilon = 0.5
    ids = torch.tensor([tokenizer(PROMPTS[1]).input_ids])
    steps = {}
    for name, model in (("first", first), ("heavier", heavier), ("smoother", smoother), ("first again", first)):
        eager, compiled = (FastDecoder(fast_model(model), torch.ones_like(ids), 3, c) for c in (False, True))
        token = eager.prefill(ids).argmax(-1)
        compiled.prefill(ids)
        a, b = eager.step(token), compiled.step(token)
        assert torch.allclose(a, b, atol=1e-4), name
        steps[name] = a
    assert not torch.allclose(steps["first"], steps["heavier"], atol=1e-2)
    assert not torch.allclose(steps["first"], steps["smoother"], atol=1e-2)


def test_speculative_decoding_gives_the_models_own_greedy_tokens(tiny_llama_raw, tmp_path):
    from tiny_models import build_tiny_llama

    model, tokenizer = load(tiny_llama_raw)
    other, _ = load(build_tiny_llama(tmp_path / "draft", chat=False, seed=1))  # same tokenizer, other weights
    plain = ours(model, tokenizer, PROMPTS, 20, Decoding())
    for draft in (model, other):  # every guess right; most guesses wrong
        for k in (1, 3):
            ids = [tokenizer(p).input_ids for p in PROMPTS]
            done = [e for e in generate(model, tokenizer, ids, Sampling(max_new_tokens=20),
                                        decoding=Decoding(draft_tokens=k), draft=draft) if isinstance(e, Completion)]
            assert [list(c.ids) for c in sorted(done, key=lambda c: c.row)] == plain
            assert all(c.output_tokens + (c.finish_reason == "eos") <= 20 for c in done)


def test_lm_generate_with_a_draft_model_records_it_and_refuses_sampling(tiny_llama_raw):
    from lmpipe.bin.generate import main

    args = ["-m", str(tiny_llama_raw), "-n", "8", "--draft-model", str(tiny_llama_raw), "--draft-quantize", "int8"]
    result = CliRunner().invoke(main, args, input="The quick brown fox\n", catch_exceptions=False)
    assert result.exit_code == 0, result.output
    import orjson

    record = orjson.loads(result.stdout.splitlines()[-1])
    plain = CliRunner().invoke(main, args[:4], input="The quick brown fox\n", catch_exceptions=False)
    assert record["generated"] == orjson.loads(plain.stdout.splitlines()[-1])["generated"]
    assert record["manifest"]["draft"]["quantize"] == "int8" and record["manifest"]["draft"]["tokens"] == 4
    refused = CliRunner().invoke(main, [*args, "--temperature", "0.7"], input="hi\n")
    assert refused.exit_code == 2 and "--temperature 0" in refused.output
    # speculative rows run the uncompiled step: --compile says so, and the manifest does not claim it
    compiled = CliRunner().invoke(main, [*args, "--compile"], input="The quick brown fox\n", catch_exceptions=False)
    assert compiled.exit_code == 0, compiled.output
    again = orjson.loads(compiled.stdout.splitlines()[-1])
    assert again["generated"] == record["generated"] and again["manifest"]["compile"] is False
    assert "--compile: speculative rows run the fast path's uncompiled step" in compiled.stderr
