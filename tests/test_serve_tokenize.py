"""lm-serve's /tokenize and /detokenize in vLLM's form: the ids lm-tokenize writes, the prompt a
chat completion gets, round trips, and errors in OpenAI's shape."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl
from serve_helpers import JSON, Server

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Café, naïve, Straße, żółć",
    "東京は日本の首都です。北京欢迎你",
    "Emoji: 🙂👍🏽🚀",
    "def f(x):\n    return {'a': x ** 2}  # code",
]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


def lm_tokenize(records: list[dict], *args: str) -> list[dict]:
    from lmpipe.bin.tokenize import main

    lines = "".join(orjson.dumps(r).decode() + "\n" for r in records)
    result = CliRunner().invoke(main, list(args), input=lines, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return jsonl(result.stdout_bytes)


@pytest.fixture(scope="module")
def server(embedded):
    s = Server("smollm2")  # the embedded model (converted by the fixture), by its alias
    yield s
    s.stop()


def post(server, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=120)


def test_text_ids_equal_lm_tokenize_and_round_trip(server):
    expected = lm_tokenize([{"text": t} for t in SAMPLES])
    for text, want in zip(SAMPLES, expected, strict=True):
        got = post(server, "/tokenize", {"model": "smollm2", "prompt": text, "return_token_strs": True}).json()
        assert got == {"count": want["count"], "max_model_len": 8192, "tokens": want["ids"],
                       "token_strs": want["tokens"]}
        assert post(server, "/detokenize", {"model": "smollm2", "tokens": got["tokens"]}).json() == {"prompt": text}
    plain = post(server, "/tokenize", {"prompt": SAMPLES[0]}).json()  # no `model`: the server's
    assert set(plain) == {"count", "max_model_len", "tokens"} and plain["tokens"] == expected[0]["ids"]


def test_chat_ids_are_lm_tokenizes_and_the_completions_prompt(server):
    want = lm_tokenize([{"messages": CHAT}])[0]
    got = post(server, "/tokenize", {"messages": CHAT}).json()
    assert got["tokens"] == want["ids"] and got["count"] == want["count"]
    back = post(server, "/detokenize", {"tokens": got["tokens"]}).json()["prompt"]
    assert back == want["prompt"] and back.endswith("<|im_start|>assistant\n")
    # The very prompt /v1/chat/completions feeds the model.
    answer = post(server, "/v1/chat/completions", {"messages": CHAT, "max_tokens": 1}).json()
    assert answer["usage"]["prompt_tokens"] == got["count"]
    # Without the generation prompt: the same ids, less the assistant's opening.
    bare = post(server, "/tokenize", {"messages": CHAT, "add_generation_prompt": False}).json()["tokens"]
    assert got["tokens"][:len(bare)] == bare and len(bare) < len(got["tokens"])
    assert post(server, "/detokenize", {"tokens": bare}).json()["prompt"] + "<|im_start|>assistant\n" == back
    # The last message left open: the model would continue it.
    open_ = post(server, "/tokenize", {"messages": [*CHAT, {"role": "assistant", "content": "Bl"}],
                                       "add_generation_prompt": False, "continue_final_message": True}).json()
    assert post(server, "/detokenize", {"tokens": open_["tokens"]}).json()["prompt"] == back + "Bl"
    # Content parts are joined as the chat endpoint joins them.
    parts = [CHAT[0], {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}]
    assert post(server, "/tokenize", {"messages": parts}).json()["tokens"] == got["tokens"]


def test_add_special_tokens_as_lm_tokenize_no_special():
    """A tokenizer that adds special tokens (BERT's [CLS] ... [SEP]), through the same function
    the route calls, against lm-tokenize with and without --no-special."""
    from lmpipe.models.loading import load_tokenizer
    from lmpipe.models.resolve import resolve
    from lmpipe.serve.tokens import tokenized

    ref = resolve("all-minilm-l6-v2")
    scheduler = SimpleNamespace(tokenizer=load_tokenizer(ref), model_id=ref.id, ref=ref, context_length=lambda: 512)
    with_special = lm_tokenize([{"text": "a cat"}], "-m", "all-minilm-l6-v2")[0]["ids"]
    without = lm_tokenize([{"text": "a cat"}], "-m", "all-minilm-l6-v2", "--no-special")[0]["ids"]
    assert with_special[1:-1] == without and len(with_special) == len(without) + 2
    assert tokenized(scheduler, {"prompt": "a cat"})["tokens"] == with_special
    assert tokenized(scheduler, {"prompt": "a cat", "add_special_tokens": False})["tokens"] == without


@pytest.mark.parametrize(("path", "body", "code"), [
    ("/tokenize", {"prompt": "hi", "chat_template": "{{ x }}"}, "unsupported_parameter"),
    ("/tokenize", {"prompt": "hi", "add_generation_prompt": True}, "unsupported_parameter"),  # a chat field
    ("/tokenize", {"prompt": ["hi"]}, "invalid_type"),
    ("/tokenize", {"prompt": "hi", "add_special_tokens": "yes"}, "invalid_type"),
    ("/tokenize", {"model": "other", "prompt": "hi"}, "model_not_found"),
    ("/tokenize", {"messages": CHAT, "continue_final_message": True}, "invalid_value"),
    ("/tokenize", {"messages": []}, "invalid_type"),
    ("/tokenize", {"messages": [{"role": "robot", "content": "hi"}]}, "invalid_messages"),
    ("/detokenize", {"tokens": [1, 10 ** 9]}, "invalid_value"),
    ("/detokenize", {"tokens": "hi"}, "invalid_type"),
    ("/detokenize", {"tokens": [1], "add_special_tokens": True}, "unsupported_parameter"),
])
def test_errors_in_openais_shape(server, path, body, code):
    response = post(server, path, body)
    assert response.status_code == (404 if code == "model_not_found" else 400)  # vLLM's 404 for a model it lacks
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]


def test_malformed_json_is_a_400(server):
    response = httpx.post(server.url + "/tokenize", content=b"{", headers=JSON, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
