"""Thinking on and off, a bound on thinking, and a chat template of one's own: the prompt ids
transformers' apply_chat_template gives, through lm-generate, lm-serve and an agent's [run]."""

from __future__ import annotations

import hashlib
from pathlib import Path

import openai
import pytest
from conftest import jsonl, run_tool
from serve_helpers import Server
from tiny_models import CHATML, train_tokenizer

# Qwen3-style: enable_thinking false closes an empty think block; otherwise the block is opened
# for the model, as DeepSeek-R1's and Qwen3-Thinking's templates do.
QWEN3 = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
OTHER = "{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}[ASSISTANT] "
QUESTION = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def thinker(tmp_path_factory) -> Path:
    """A tiny random Llama whose tokenizer has <think> and </think> (plain added tokens, as
    Qwen3's) and a Qwen3-style template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("thinker")
    tokenizer = train_tokenizer()
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = QWEN3
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tok(thinker):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(thinker)


def no_end(tok) -> list[str]:
    """--logit-bias options that keep the random model from ending, closing the block itself or
    writing only newlines (its greedy choice here)."""
    banned = [tok.eos_token_id, tok.convert_tokens_to_ids("</think>"), tok("\n").input_ids[0]]
    return [arg for t in banned for arg in ("--logit-bias", f"{t}=-100")]


def expected_ids(tok, **kwargs) -> list[int]:
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False, **kwargs)
    return tok(text, add_special_tokens=False).input_ids


def cli_prompt_ids(tok, *args: str) -> tuple[list[int], dict]:
    """The prompt ids lm-generate's options make of QUESTION, and the manifest's settings."""
    from lmpipe.backends.generate import run_settings
    from lmpipe.bin.generate import main
    from lmpipe.chat.prompts import prompt_ids, with_template
    from lmpipe.cli.settings import generate_settings

    settings = generate_settings(main.make_context("lm-generate", list(args)).params)
    prompt = with_template(settings.prompt, tok)
    return prompt_ids({"messages": QUESTION}, tok, prompt), run_settings(settings)


def test_no_think_renders_as_transformers_with_enable_thinking_false(thinker, tok):
    off, manifest = cli_prompt_ids(tok, "--no-think")
    assert off == expected_ids(tok, enable_thinking=False) and manifest["think"] is False
    on, manifest = cli_prompt_ids(tok, "--think")
    assert on == expected_ids(tok, enable_thinking=True) and manifest["think"] is True
    assert cli_prompt_ids(tok)[0] == expected_ids(tok) == on != off
    done = run_tool("lm-generate", "-m", str(thinker), "--no-think", "-n", "2", input=jsonl_line(QUESTION))
    assert done.returncode == 0, done.stderr.decode()
    assert jsonl(done.stdout)[0]["stats"]["input_tokens"] == len(off)


def jsonl_line(messages) -> str:
    import json

    return json.dumps({"messages": messages}) + "\n"


def test_reasoning_budget_closes_the_think_block(thinker, tok):
    close = tok.convert_tokens_to_ids("</think>")
    done = run_tool("lm-generate", "-m", str(thinker), "--reasoning-budget", "4", "-n", "10", "--top-probs", "1",
                    *no_end(tok), input=jsonl_line(QUESTION))
    assert done.returncode == 0, done.stderr.decode()
    record = jsonl(done.stdout)[0]
    ids = [t["id"] for t in record["tokens"]]
    assert len(ids) == 10 and ids[4] == close and close not in ids[:4] + ids[5:]  # forced past even a -100 bias
    assert record["reasoning"] == tok.decode(ids[:4]).strip() and record["reasoning"]
    assert record["generated"] == tok.decode(ids[5:]).lstrip() and record["generated"]
    assert record["manifest"]["sampling"]["reasoning_budget"] == 4
    unbounded = run_tool("lm-generate", "-m", str(thinker), "-n", "10", "--top-probs", "1", *no_end(tok),
                         input=jsonl_line(QUESTION))
    assert close not in [t["id"] for t in jsonl(unbounded.stdout)[0]["tokens"]]


def test_a_budget_of_0_answers_at_once(thinker, tok):
    close = tok.convert_tokens_to_ids("</think>")
    done = run_tool("lm-generate", "-m", str(thinker), "--reasoning-budget", "0", "-n", "3", "--top-probs", "1",
                    input=jsonl_line(QUESTION))
    record = jsonl(done.stdout)[0]
    assert record["tokens"][0]["id"] == close and record["reasoning"] == ""


def test_chat_template_file_renders_as_transformers(thinker, tok, tmp_path):
    path = tmp_path / "other.jinja"
    path.write_text(OTHER)
    ids, manifest = cli_prompt_ids(tok, "--chat-template", str(path))
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False, chat_template=OTHER)
    assert ids == tok(text, add_special_tokens=False).input_ids != expected_ids(tok)
    assert manifest["chat_template_sha256"] == hashlib.sha256(OTHER.encode()).hexdigest()
    done = run_tool("lm-generate", "-m", str(thinker), "--chat-template", str(path), "-n", "2",
                    input=jsonl_line(QUESTION))
    record = jsonl(done.stdout)[0]
    assert record["stats"]["input_tokens"] == len(ids)
    assert record["manifest"]["chat_template_sha256"] == manifest["chat_template_sha256"]


@pytest.mark.parametrize("args, message", [
    (["--chat-template", "nosuch"], "--chat-template nosuch: no such file, nor a template of this model "
                                    "(it has no named templates)"),
    (["--chat-template", "./missing.jinja"], "--chat-template ./missing.jinja: no such file (nor a template name)"),
])
def test_a_bad_chat_template_is_one_line(thinker, args, message):
    done = run_tool("lm-generate", "-m", str(thinker), *args, input=jsonl_line(QUESTION))
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().strip() == f"lm-generate: error: {message}"


def test_agent_run_think(thinker, tok):
    import json

    off = json.dumps({"messages": QUESTION, "agent": {"run": {"think": False, "max_new_tokens": 2}}})
    bad = json.dumps({"messages": QUESTION, "agent": {"run": {"think": "no"}}})
    done = run_tool("lm-generate", "-m", str(thinker), input=off + "\n" + jsonl_line(QUESTION) + bad + "\n")
    records = jsonl(done.stdout)
    assert records[0]["stats"]["input_tokens"] == len(expected_ids(tok, enable_thinking=False))
    assert records[0]["manifest"]["think"] is False and records[0]["manifest"]["agent"]["applied"]["think"] is False
    assert records[1]["stats"]["input_tokens"] == len(expected_ids(tok))
    assert records[2]["error"] == 'agent [run] think = "no": expected true or false'


@pytest.fixture(scope="module")
def served(thinker, tmp_path_factory):
    path = tmp_path_factory.mktemp("templates") / "chatml.jinja"
    path.write_text(CHATML)
    s = Server(thinker)
    t = Server(thinker, "--chat-template", str(path))
    yield s, t
    s.stop()
    t.stop()


def test_serve_chat_template_kwargs_and_reasoning_content(served, thinker, tok):
    server, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    model = str(thinker)
    banned = no_end(tok)
    no_ending = {banned[i + 1].split("=")[0]: -100 for i in range(0, len(banned), 2)}
    off = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3, temperature=0,
                                         logit_bias=no_ending,
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.usage.prompt_tokens == len(expected_ids(tok, enable_thinking=False))
    assert getattr(off.choices[0].message, "reasoning_content", None) is None and off.choices[0].message.content
    on = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3, temperature=0,
                                        logit_bias=no_ending, reasoning_effort="low")
    assert on.usage.prompt_tokens == len(expected_ids(tok))
    assert on.choices[0].message.reasoning_content and on.choices[0].message.content == ""  # never closed: all thinking
    hidden = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3, temperature=0,
                                            logit_bias=no_ending, extra_body={"include_reasoning": False})
    assert getattr(hidden.choices[0].message, "reasoning_content", None) is None
    chunks = list(client.chat.completions.create(model=model, messages=QUESTION, max_tokens=3, temperature=0,
                                                 logit_bias=no_ending, stream=True))
    streamed = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert streamed.strip() == on.choices[0].message.reasoning_content
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=QUESTION, max_tokens=2,
                                       extra_body={"chat_template_kwargs": {"messages": []}})
    assert "`chat_template_kwargs.messages`" in caught.value.message
    budget = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=5, temperature=0, logprobs=True,
                                            logit_bias=no_ending, extra_body={"reasoning_budget": 2})
    said = [entry.token for entry in budget.choices[0].logprobs.content]
    assert len(said) == 5 and said[2] == "</think>" and "</think>" not in said[:2] + said[3:]
    assert budget.choices[0].message.reasoning_content and budget.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as caught:  # text completions have no think block to close
        client.completions.create(model=model, prompt="x", max_tokens=2, extra_body={"reasoning_budget": 2})
    assert "`reasoning_budget` is not supported by /v1/completions" in caught.value.message


def test_lm_generate_through_the_server_keeps_reasoning_and_no_think(served, thinker, tok):
    server, _ = served
    args = ["-m", str(thinker), "-n", "3", *no_end(tok)]
    for extra in ([], ["--no-think"]):
        local = jsonl(run_tool("lm-generate", *args, *extra, "--no-server", input=jsonl_line(QUESTION)).stdout)[0]
        answered = run_tool("lm-generate", *args, *extra, "--server", server.url, input=jsonl_line(QUESTION))
        remote = jsonl(answered.stdout)[0]
        assert (remote.get("reasoning"), remote["generated"], remote["stats"]["input_tokens"]) == (
            local.get("reasoning"), local["generated"], local["stats"]["input_tokens"])


def test_serve_chat_template(served, tok):
    _, server = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    answer = client.chat.completions.create(model=client.models.list().data[0].id, messages=QUESTION, max_tokens=2,
                                            temperature=0)
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False, chat_template=CHATML)
    assert answer.usage.prompt_tokens == len(tok(text, add_special_tokens=False).input_ids) != len(expected_ids(tok))


def test_lm_batch_chat_template_and_kwargs(thinker, tok, tmp_path):
    import json

    path = tmp_path / "other.jinja"
    path.write_text(OTHER)
    line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": QUESTION, "max_tokens": 2, "chat_template_kwargs": {"enable_thinking": False}}}
    done = run_tool("lm-batch", "-m", str(thinker), "--no-server", input=json.dumps(line) + "\n")
    assert done.returncode == 0, done.stderr.decode()
    usage = jsonl(done.stdout)[0]["response"]["body"]["usage"]
    assert usage["prompt_tokens"] == len(expected_ids(tok, enable_thinking=False))
    done = run_tool("lm-batch", "-m", str(thinker), "--no-server", "--chat-template", str(path),
                    input=json.dumps(line) + "\n")
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False, chat_template=OTHER)
    usage = jsonl(done.stdout)[0]["response"]["body"]["usage"]
    assert usage["prompt_tokens"] == len(tok(text, add_special_tokens=False).input_ids)


GPT_OSS = "Reasoning: {{ reasoning_effort | default('medium') }}\n{% for m in messages %}{{ m['content'] }}{% endfor %}"


@pytest.mark.parametrize("args, expected", [
    ([], "Reasoning: medium"),
    (["--no-think"], "Reasoning: low"),  # gpt-oss always reasons: --no-think is its least
    (["--no-think", "--reasoning-effort", "high"], "Reasoning: high"),
    (["--reasoning-effort", "low"], "Reasoning: low"),
])
def test_reasoning_effort_reaches_templates_that_take_it(tok, tmp_path, args, expected):
    path = tmp_path / "gpt-oss.jinja"
    path.write_text(GPT_OSS)
    ids, _ = cli_prompt_ids(tok, "--chat-template", str(path), *args)
    assert tok.decode(ids).startswith(expected + "\n")
