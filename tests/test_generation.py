"""The generation loop against transformers' own generate: exact tokens, batched and not."""

import pytest

from lmpipe.chat.prompts import PromptSettings, prompt_ids
from lmpipe.engine.generation import Completion, Token, generate
from lmpipe.engine.sampling import Sampling

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three primary colors.",
    "Say 'good morning' in Spanish.",
    "def fibonacci(n):",
]


def load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def hf_greedy(model, tokenizer, ids, n):
    """transformers' generate, one prompt at a time; the reference."""
    import torch

    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False)
    new = out[0, len(ids):].tolist()
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    return new[:-1] if new and new[-1] in eos else new


def completions(model, tokenizer, prompts, sampling, **kw):
    done = [e for e in generate(model, tokenizer, prompts, sampling, **kw) if isinstance(e, Completion)]
    return sorted(done, key=lambda c: c.row)


@pytest.fixture(scope="module")
def smol(embedded):
    model, tokenizer = load(embedded)
    ids = [prompt_ids({"text": p}, tokenizer, PromptSettings()) for p in PROMPTS]
    return model, tokenizer, ids


def test_greedy_is_token_identical_to_transformers(smol):
    model, tokenizer, prompts = smol
    sampling = Sampling(max_new_tokens=24)
    expected = [hf_greedy(model, tokenizer, ids, 24) for ids in prompts]
    single = [completions(model, tokenizer, [ids], sampling)[0].ids for ids in prompts]
    batched = [c.ids for c in completions(model, tokenizer, prompts, sampling)]
    assert [list(s) for s in single] == expected
    assert [list(b) for b in batched] == expected
    assert "Paris" in tokenizer.decode(expected[0])


def test_tiny_model_with_left_padding_matches_transformers(tiny_llama):
    model, tokenizer = load(tiny_llama)
    prompts = [tokenizer("The quick brown fox")["input_ids"], tokenizer("Pipes")["input_ids"],
               tokenizer("def add(a, b):\n    return a + b. Paris is")["input_ids"]]
    sampling = Sampling(max_new_tokens=12)
    expected = [hf_greedy(model, tokenizer, ids, 12) for ids in prompts]
    assert [list(c.ids) for c in completions(model, tokenizer, prompts, sampling)] == expected


def test_events_stream_the_text_and_completions_carry_stats(smol):
    model, tokenizer, prompts = smol
    events = list(generate(model, tokenizer, prompts[:1], Sampling(max_new_tokens=8), top_probs=3))
    tokens = [e for e in events if isinstance(e, Token)]
    (done,) = [e for e in events if isinstance(e, Completion)]
    assert "".join(t.text for t in tokens) == done.text
    assert done.output_tokens == len(done.ids) == len(tokens)
    assert done.input_tokens == len(prompts[0])
    assert 0 < done.ttft_s <= done.total_s
    for t in tokens:
        assert len(t.top) == 3 and t.top[0].p >= t.top[1].p >= t.top[2].p
        assert t.top[0].id == t.id and t.p == t.top[0].p  # greedy picks the likeliest


def test_stop_strings_are_cut_and_reported(smol):
    model, tokenizer, prompts = smol
    full = completions(model, tokenizer, prompts[:1], Sampling(max_new_tokens=24))[0]
    assert " is " in full.text
    cut = completions(model, tokenizer, prompts[:1], Sampling(max_new_tokens=24, stop=(" is ",)))[0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(" is ")]


def test_seeds_reproduce_and_differ(tiny_llama):
    model, tokenizer = load(tiny_llama)
    ids = [tokenizer("The quick")["input_ids"]]

    def sample(seed):
        return completions(model, tokenizer, ids, Sampling(temperature=1.0, max_new_tokens=20, seed=seed))[0].ids

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_a_row_is_sampled_the_same_alone_or_in_a_batch(tiny_llama):
    model, tokenizer = load(tiny_llama)
    ids = tokenizer("The quick")["input_ids"]
    sampling = Sampling(temperature=0.9, top_k=50, max_new_tokens=10, seed=5)
    alone = completions(model, tokenizer, [ids], sampling)[0].ids
    together = completions(model, tokenizer, [ids, ids], sampling)
    assert together[0].ids == together[1].ids == alone
