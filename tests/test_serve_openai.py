"""lm-serve answers the real openai client as vLLM does: every field implemented or refused by
name, content parts, prompts in every form, log-probabilities (chat and legacy, streamed and
not) equal to transformers' own, echo scoring the prompt, n choices, penalties, streamed usage;
with --api-key, as a server on a network runs."""

from __future__ import annotations

import httpx
import openai
import pytest
from conftest import jsonl, run_tool
from serve_helpers import Server

PROMPT = "The quick brown fox"
CACHED_BOUND = 1e-4  # docs/records.md, "Replaying a record": a prompt served from the prompt cache
KEY = "sk-lmpipe-test"  # the server wants it, as a server on a network should


@pytest.fixture(scope="module")
def server(tiny_llama):
    s = Server(tiny_llama, "--max-batch", "8", "--preload", "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


@pytest.fixture(scope="module")
def hf(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(tiny_llama))


def chat_ids(tok, content: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


def log_softmax(model, ids: list[int]):
    """transformers' own log-probabilities after each of `ids` [len, vocab]."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def greedy(model, tok, ids: list[int], n: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, len(ids):].tolist()


def test_chat_logprobs_are_transformers_log_softmax(client, model, hf):
    lm, tok = hf
    ids = chat_ids(tok, PROMPT)
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                            max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    entries = answer.choices[0].logprobs.content
    new = greedy(lm, tok, ids, 6)
    assert [e.token for e in entries] == [tok.decode([t]) for t in new]
    table = log_softmax(lm, ids + new)
    for i, (entry, token) in enumerate(zip(entries, new, strict=True)):
        row = table[len(ids) + i - 1]
        assert entry.logprob == pytest.approx(float(row[token]), abs=1e-4)
        values, top = row.topk(3)
        assert [t.token for t in entry.top_logprobs] == [tok.decode([t]) for t in top.tolist()]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
        assert entry.bytes == list(entry.token.encode())
    streamed = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                              max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, stream=True)
    pieces = [e for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    # Served from the prompt cache (the same prompt again): its first token's logits come from a
    # product over fewer rows, within the docs' bound of the whole answer's (docs/records.md, "Replaying a record").
    assert [e.token for e in pieces] == [e.token for e in entries]
    assert [e.logprob for e in pieces] == pytest.approx([e.logprob for e in entries], abs=CACHED_BOUND)
    for piece, entry in zip(pieces, entries, strict=True):
        assert [t.token for t in piece.top_logprobs] == [t.token for t in entry.top_logprobs]
        assert [t.logprob for t in piece.top_logprobs] == pytest.approx([t.logprob for t in entry.top_logprobs],
                                                                          abs=CACHED_BOUND)


def test_completion_logprobs_in_the_legacy_format(client, model, hf):
    lm, tok = hf
    ids = tok(PROMPT).input_ids
    done = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2)
    lp = done.choices[0].logprobs
    new = greedy(lm, tok, ids, 5)
    table = log_softmax(lm, ids + new)
    assert lp.tokens == [tok.decode([t]) for t in new]
    assert lp.token_logprobs == pytest.approx([float(table[len(ids) + i - 1][t]) for i, t in enumerate(new)], abs=1e-4)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    for i, top in enumerate(lp.top_logprobs):
        values, best = table[len(ids) + i - 1].topk(2)
        near = {tok.decode([t]): pytest.approx(v, abs=1e-4)
                for t, v in zip(best.tolist(), values.tolist(), strict=True)}
        assert near.items() <= top.items()
        assert top[lp.tokens[i]] == lp.token_logprobs[i]  # the chosen token is always there
    streamed = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2,
                                         stream=True)
    chunks = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert sum((c.tokens for c in chunks), []) == lp.tokens
    # The same prompt again, possibly served from the prompt cache: the docs' bound.
    assert sum((c.token_logprobs for c in chunks), []) == pytest.approx(lp.token_logprobs, abs=CACHED_BOUND)
    assert sum((c.text_offset for c in chunks), []) == lp.text_offset


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_scores_the_prompt_in_one_pass(client, model, hf, max_tokens):
    """What lm-evaluation-harness sends for every choice of a multiple-choice question."""
    lm, tok = hf
    ids = tok("Pipes connect small tools and models").input_ids
    done = client.completions.create(model=model, prompt=ids, max_tokens=max_tokens, temperature=0, logprobs=1,
                                     echo=True)
    choice = done.choices[0]
    lp = choice.logprobs
    table = log_softmax(lm, ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:len(ids)] == pytest.approx([float(table[i - 1][ids[i]]) for i in range(1, len(ids))],
                                                          abs=1e-4)
    assert len(lp.tokens) == len(ids) + max_tokens
    assert choice.text.startswith(tok.decode(ids))
    assert done.usage.prompt_tokens == len(ids) and done.usage.completion_tokens == max_tokens
    greedy_ok = [lp.token_logprobs[i] == max(lp.top_logprobs[i].values()) for i in range(1, len(ids))]
    assert greedy_ok == [int(table[i - 1].argmax()) == ids[i] for i in range(1, len(ids))]


def test_n_choices_are_rows_of_one_batch(client, model):
    twins = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=8,
                                           temperature=0, n=2)
    assert [c.index for c in twins.choices] == [0, 1]
    assert twins.choices[0].message.content == twins.choices[1].message.content
    three = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                                           temperature=1.0, n=3, seed=5)
    texts = [c.message.content for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2] and len(set(texts)) == 3
    again = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=12,
                                           temperature=1.0, n=3, seed=5)
    assert [c.message.content for c in again.choices] == texts  # each choice's seed is the request's, plus its index
    streamed = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}],
                                              max_tokens=12, temperature=1.0, n=3, seed=5, stream=True,
                                              stream_options={"include_usage": True})
    joined = ["", "", ""]
    chunks = list(streamed)
    for c in chunks:
        for choice in c.choices:
            joined[choice.index] += choice.delta.content or ""
    assert joined == texts and chunks[-1].usage.completion_tokens == three.usage.completion_tokens


def test_prompts_in_every_form_answer_in_order(client, model, hf):
    _, tok = hf
    prompts = ["The quick brown fox", "Hola mundo", "Paris is the capital of"]
    alone = [client.completions.create(model=model, prompt=p, max_tokens=6, temperature=0).choices[0].text
             for p in prompts]
    texts = client.completions.create(model=model, prompt=prompts, max_tokens=6, temperature=0)
    ids = client.completions.create(model=model, prompt=[tok(p).input_ids for p in prompts], max_tokens=6,
                                    temperature=0)
    one = client.completions.create(model=model, prompt=tok(prompts[1]).input_ids, max_tokens=6, temperature=0)
    assert [c.text for c in texts.choices] == [c.text for c in ids.choices] == alone
    assert [c.index for c in ids.choices] == [0, 1, 2] and one.choices[0].text == alone[1]
    assert ids.usage.prompt_tokens == sum(len(tok(p).input_ids) for p in prompts)
    two = client.completions.create(model=model, prompt=prompts[:2], max_tokens=6, temperature=0, n=2)
    assert [c.text for c in two.choices] == [alone[0], alone[0], alone[1], alone[1]]


def test_content_parts_are_joined(client, model):
    parts = [{"type": "text", "text": "The quick"}, {"type": "text", "text": "brown fox"}]
    joined = client.chat.completions.create(model=model, messages=[{"role": "user", "content": parts}], max_tokens=8,
                                            temperature=0)
    plain = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "The quick\nbrown fox"}],
                                           max_tokens=8, temperature=0)
    assert joined.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("options, named", [
    ({"logit_bias": {"5": 200}}, "`logit_bias` 5"),
    ({"logit_bias": {"100000": 1}}, "`logit_bias` 100000"),
    ({"extra_body": {"best_of": 2}}, "`best_of`"),
    ({"extra_body": {"suffix": "!"}}, "`suffix`"),
    ({"stream_options": {"include_usage": True}}, "`stream_options`"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]},
     "'image_url'"),
    ({"top_logprobs": 2}, "`top_logprobs`"),
    ({"n": 17}, "`n` must be from 1 to 16 (lm-serve --max-n)"),  # never a 503 that a retry could cure
])
def test_what_is_not_supported_is_a_400_naming_it(client, model, options, named):
    options.setdefault("messages", [{"role": "user", "content": PROMPT}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, max_tokens=4, **options)
    assert named in caught.value.message


def test_no_ops_are_accepted(client, model):
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=4,
                                            temperature=0, user="someone", metadata={"k": "v"},
                                            parallel_tool_calls=True)
    plain = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=4,
                                           temperature=0)
    # Accepted and without effect: the same answer as the plain request.
    assert answer.choices[0].message.content == plain.choices[0].message.content
    assert answer.choices[0].finish_reason == plain.choices[0].finish_reason
    assert answer.usage.completion_tokens == plain.usage.completion_tokens > 0


def test_penalties_are_applied_to_the_generated_tokens(client, model, hf, tiny_llama):
    """Greedy with OpenAI's penalties, as vLLM computes them, step by step with transformers."""
    import torch

    lm, tok = hf
    ids = tok(PROMPT).input_ids
    out: list[int] = []
    for _ in range(10):
        logits = log_softmax(lm, ids + out)[-1]  # the logits less a constant: the same argmax
        counts = torch.zeros_like(logits)
        for t in out:
            counts[t] += 1
        out.append(int((logits - 0.5 * counts - 1.5 * (counts > 0).float()).argmax()))
    answer = client.completions.create(model=model, prompt=ids, max_tokens=10, temperature=0, frequency_penalty=0.5,
                                       presence_penalty=1.5, logprobs=0)
    assert answer.choices[0].logprobs.tokens == [tok.decode([t]) for t in out]
    plain = client.completions.create(model=model, prompt=ids, max_tokens=10, temperature=0)
    assert plain.choices[0].text != answer.choices[0].text
    local = run_tool("lm-generate", "-m", str(tiny_llama), "--raw", "-n", "10", "--frequency-penalty", "0.5",
                     "--presence-penalty", "1.5", input=PROMPT + "\n")
    record = jsonl(local.stdout)[0]
    assert record["generated"] == answer.choices[0].text
    sampling = record["manifest"]["sampling"]
    assert (sampling["presence_penalty"], sampling["frequency_penalty"]) == (
        1.5, 0.5)


def test_streamed_completions_carry_usage(server, client, model):
    chunks = list(client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens > 0
    response = httpx.post(server.url + "/v1/completions", timeout=60, headers={"Authorization": f"Bearer {KEY}"},
                          json={"prompt": PROMPT, "stream": True, "stream_options": {"continuous_usage_stats": True}})
    assert response.status_code == 400
    assert "stream_options.continuous_usage_stats" in response.json()["error"]["message"]


def test_a_wrong_key_is_openais_authentication_error(server, model):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"


def test_min_p_and_logit_bias_sample_as_the_reference(client, model, hf):
    """OpenAI's logit_bias and vLLM's min_p, through openai-python, against the reference sampler."""
    from test_sampling import reference

    lm, tok = hf
    ids = tok(PROMPT).input_ids
    forced = tok(" dog").input_ids[0]
    pinned = client.completions.create(model=model, prompt=ids, max_tokens=4, temperature=0,
                                       logit_bias={str(forced): 100}, logprobs=0)
    assert pinned.choices[0].logprobs.tokens == [tok.decode([forced])] * 4
    bias = {tok(" fo").input_ids[0]: 2.5}
    sampled = client.completions.create(model=model, prompt=ids, max_tokens=10, temperature=1.5, seed=5,
                                        logit_bias={str(t): b for t, b in bias.items()}, logprobs=0,
                                        extra_body={"min_p": 0.2})
    expected, dropped = reference(lm, ids, 10, 5, 1.5, 0.2, bias, tok.eos_token_id)
    assert sampled.choices[0].logprobs.tokens == [tok.decode([t]) for t in expected] and dropped == len(expected)
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=3,
                                          temperature=0, logit_bias={str(forced): 100})
    assert chat.choices[0].message.content == tok.decode([forced] * 3)
