"""Chat templates rendered with jinja2 equal transformers' apply_chat_template (issue 18, acceptance 3):
SmolLM2 (the embedded model), Llama 3.2, Qwen2.5, Mistral Nemo and Gemma 2, kept as test data
(tests/data/chat_templates/SOURCES.md says where each came from), with system prompts, tools,
tool calls and results, and the generation prompt."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmpipe.chat.chat_template import apply_chat_template, render_chat
from lmpipe.errors import RecordError
from lmpipe.models.fast_tokenizer import JsonTokenizer

DATA = Path(__file__).parent / "data" / "chat_templates"
FILES = {"llama3": "llama-3.2-3b-instruct.jinja", "qwen2.5": "qwen2.5-instruct.jinja",
         "mistral": "mistral-nemo-instruct-2407.jinja", "gemma": "gemma-2-2b-it.jinja"}
# What each family's tokenizer names as its special tokens (the template sees them).
TOKENS = {"llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
          "qwen2.5": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
          "mistral": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
          "gemma": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
          "smollm2": {}}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city, in Celsius",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City, e.g. Zürich"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city"]}}}]
CHATS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You answer in one sentence."},
               {"role": "user", "content": "Name a river in Köln, please."}],
    "turns": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
              {"role": "user", "content": "  Tell me a joke about pipes.  "}],
    "tool round": [{"role": "system", "content": "Use tools when they help."},
                   {"role": "user", "content": "Weather in Oslo?"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "call12345", "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                   {"role": "tool", "tool_call_id": "call12345", "content": "{\"temp\": 3}"},
                   {"role": "assistant", "content": "It is 3 °C in Oslo."},
                   {"role": "user", "content": "And in Paris?"}],
}
CASES = [(family, chat, tools, generation)
         for family in ("smollm2", *FILES) for chat in CHATS for tools in (False, True) for generation in (True, False)
         if not (family in ("smollm2", "gemma") and (tools or chat == "tool round"))]


@pytest.fixture(scope="module")
def hf(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.fixture(scope="module")
def templates(embedded):
    return {"smollm2": JsonTokenizer(embedded).chat_template,
            **{family: (DATA / name).read_text(encoding="utf-8") for family, name in FILES.items()}}


def both(hf, source, family, messages, tools, generation):
    """(transformers' text or its error, ours or our error)."""
    kwargs = {"tools": TOOLS if tools else None, "add_generation_prompt": generation, "date_string": "26 Jul 2024",
              **TOKENS[family]}
    try:
        theirs = hf.apply_chat_template(messages, chat_template=source, tokenize=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers raises jinja2's TemplateError for raise_exception
        theirs = f"error: {exc}"
    try:
        ours = render_chat(source, messages, special_tokens={**hf.special_tokens_map}, **kwargs)
    except RecordError as exc:
        ours = f"error: {str(exc).removeprefix('chat template: ')}"
    return theirs, ours


@pytest.mark.parametrize("family,chat,tools,generation", CASES)
def test_rendered_chats_equal_apply_chat_template(family, chat, tools, generation, hf, templates):
    theirs, ours = both(hf, templates[family], family, CHATS[chat], tools, generation)
    assert ours == theirs
    assert not ours.startswith("error") or (family == "gemma" and chat in ("system",))


def test_a_template_that_refuses_says_why(hf, templates):
    theirs, ours = both(hf, templates["gemma"], "gemma", CHATS["system"], False, True)
    assert ours == theirs == "error: System role not supported"


def test_strftime_now_and_loop_controls(hf):
    source = ("{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m.content }}"
              "{% if loop.index > 1 %}{% break %}{% endif %}{% endfor %}|{{ strftime_now('%Y') }}|"
              "{{ {'é': 'ü', 'b': [1, 2]} | tojson(indent=2) }}|{{ messages[1] | tojson }}")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "<a & b>"},
                {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}]
    assert render_chat(source, messages) == hf.apply_chat_template(messages, chat_template=source, tokenize=False)


def test_the_tokenizer_s_template_and_special_tokens(embedded, tiny_llama):
    """apply_chat_template on a JsonTokenizer: its own template, its own special tokens."""
    from transformers import AutoTokenizer

    for folder in (embedded, tiny_llama):
        hf_tok, ours = AutoTokenizer.from_pretrained(folder), JsonTokenizer(folder)
        for messages in CHATS["system"], CHATS["turns"]:
            assert apply_chat_template(ours, messages, add_generation_prompt=True) == \
                hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
