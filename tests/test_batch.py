"""lm-batch: OpenAI batch files answered by lm-serve's own app; resume, shards, --server, OpenAI's types."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import orjson
import pytest
from click.testing import CliRunner
from conftest import BIN, jsonl
from serve_helpers import Server

from lmpipe.bin.batch import main

PROMPTS = ["What is a pipe?", "Name a fox.", "Count to three.", "Say hello.", "Why is the sky blue?",
           "Write a word.", "Paris is", "Tools do one job.", "Tell me a joke.", "The capital of Spain?",
           "Tokens in, tokens out."]


def batch_lines() -> list[dict]:
    """30 lines: 11 chats, 8 completions, 8 embeddings, a malformed body, a duplicate custom_id, an unknown url."""
    lines = [{"custom_id": f"chat-{n}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": p}], "max_tokens": 48, "temperature": 0}}
             for n, p in enumerate(PROMPTS)]
    lines += [{"custom_id": f"cmpl-{n}", "method": "POST", "url": "/v1/completions",
               "body": {"prompt": p, "max_tokens": 48, "temperature": 0}} for n, p in enumerate(PROMPTS[:8])]
    lines += [{"custom_id": f"emb-{n}", "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "all-minilm-l6-v2", "input": p if n % 2 else [p, p.upper()]}}
              for n, p in enumerate(PROMPTS[:8])]
    mixed = [x for triple in zip(lines[:8], lines[11:19], lines[19:27], strict=True) for x in triple] + lines[8:11]
    mixed.insert(5, {"custom_id": "malformed", "method": "POST", "url": "/v1/chat/completions", "body": "oops"})
    mixed.insert(17, {**mixed[3], "body": {"messages": [{"role": "user", "content": "again"}]}})  # chat-1 twice
    mixed.insert(23, {"custom_id": "images", "method": "POST", "url": "/v1/images/generations", "body": {}})
    assert len(mixed) == 30
    return mixed


def as_input(lines: list[dict]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


VOLATILE = ("id", "created", "timings", "lmpipe")  # ids, clocks and timings differ from run to run


def comparable(line: dict) -> tuple:
    """What must be the same in two runs of one batch line: everything but ids, clocks and timings."""
    response = line["response"]
    if response is None:
        return line["custom_id"], None, orjson.dumps(line["error"], option=orjson.OPT_SORT_KEYS)
    body = {k: v for k, v in response["body"].items() if k not in VOLATILE}
    return line["custom_id"], response["status_code"], orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def run_batch(*args: str, input: bytes):
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, jsonl(result.stdout_bytes), result.stderr


@pytest.fixture(scope="module")
def full_run(tiny_llama):
    code, out, err = run_batch("-m", str(tiny_llama), input=as_input(batch_lines()))
    assert code == 1 and "3 of 30 records failed" in err, err
    return out


def test_every_line_answered_once_errors_in_openais_shape(full_run):
    lines = batch_lines()
    assert [o["custom_id"] for o in full_run] == [line["custom_id"] for line in lines]
    assert all(o["id"].startswith("batch_req_") and set(o) == {"id", "custom_id", "response", "error"}
               for o in full_run)
    by_line = dict(enumerate(full_run, 1))
    assert by_line[6]["response"]["status_code"] == 400 and by_line[6]["error"] is None
    assert by_line[6]["response"]["body"] == {"error": {"message": "the request body must be a JSON object",
                                                        "type": "invalid_request_error", "code": "invalid_json"}}
    assert by_line[18]["response"] is None and by_line[18]["custom_id"] == "chat-1"
    assert by_line[18]["error"] == {"code": "duplicate_custom_id", "line": 18,
                                    "message": "custom_id 'chat-1' is used by an earlier line"}
    assert by_line[24]["error"]["code"] == "invalid_url" and by_line[24]["response"] is None
    ok = [o for o in full_run if o["response"] and o["response"]["status_code"] == 200]
    assert len(ok) == 27
    assert {o["response"]["body"]["object"] for o in ok} == {"chat.completion", "text_completion", "list"}


def test_parses_with_the_openai_packages_types(full_run):

    from openai import BaseModel
    from openai.types import BatchError, Completion, CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion

    # The openai package has no type for a batch output line itself: its envelope, from the package's
    # BaseModel, around the package's own types for each body and for a line's error.
    class BatchResponse(BaseModel):
        status_code: int
        request_id: str
        body: dict

    class BatchOutputLine(BaseModel):
        id: str
        custom_id: str | None
        response: BatchResponse | None
        error: BatchError | None

    kinds = {"/v1/chat/completions": ChatCompletion, "/v1/completions": Completion,
             "/v1/embeddings": CreateEmbeddingResponse}
    for line, data in zip(batch_lines(), full_run, strict=True):
        parsed = BatchOutputLine.model_validate(data, strict=True)
        if parsed.response and parsed.response.status_code == 200:
            body = kinds[line["url"]].model_validate(parsed.response.body, strict=True)
            assert body.model_dump(exclude_unset=True).keys() <= parsed.response.body.keys()
        else:
            assert parsed.error is not None or "error" in parsed.response.body
    chat = ChatCompletion.model_validate(full_run[0]["response"]["body"])
    assert chat.choices[0].message.content and chat.usage.completion_tokens == 48


def _lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_then_resume_answers_every_line_once(tiny_llama, full_run, tmp_path):
    source = tmp_path / "batch.jsonl"
    source.write_bytes(as_input(batch_lines()))
    out = tmp_path / "out.jsonl"
    args = ["-m", str(tiny_llama), "--output", str(out), "--resume", "-b", "1", "--progress", "none"]
    with open(source, "rb") as stdin:
        proc = subprocess.Popen([str(BIN / "lm-batch"), *args], stdin=stdin, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while _lines(out) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert 8 <= _lines(out) < 30
    code, _, err = run_batch(*args, input=source.read_bytes())
    assert code == 1, err
    written = jsonl(out.read_bytes())
    assert Counter(o["custom_id"] for o in written) == Counter(o["custom_id"] for o in full_run)
    assert Counter(map(comparable, written)) == Counter(map(comparable, full_run))


def test_shards_union_is_the_full_run(tiny_llama, full_run, tmp_path):
    parts = []
    for index in range(3):
        out = tmp_path / f"part{index}.jsonl"
        run_batch("-m", str(tiny_llama), "--shard", f"{index}/3", "--output", str(out), input=as_input(batch_lines()))
        parts.append(jsonl(out.read_bytes()))
    assert all(len(p) == 10 for p in parts)
    assert Counter(map(comparable, [o for p in parts for o in p])) == Counter(map(comparable, full_run))


def test_through_lm_serve_the_same_bodies(tiny_llama, full_run):
    import torch

    # This process's thread count: how many threads split a float sum decides its last bits,
    # and lm-serve leaves a core to its event loop unless told.
    server = Server(tiny_llama, "--threads", str(torch.get_num_threads()))
    try:
        code, out, err = run_batch("--server", server.url, input=as_input(batch_lines()))
    finally:
        server.stop()
    assert code == 1, err
    assert [comparable(o) for o in out] == [comparable(o) for o in full_run]


def test_a_running_lm_serve_for_the_model_answers_unless_no_server(tiny_llama, tmp_path, monkeypatch):
    """As lm-generate finds it: a server recorded in lmpipe's home whose default model is this one,
    with the same settings; --no-server answers in this process. The outputs are the same."""
    import httpx

    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path / "home"))  # no other test's server
    lines = [{"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"messages": [{"role": "user", "content": text}], "max_tokens": 6, "temperature": 0}}
             for i, text in enumerate(["The quick brown fox", "Paris is"])]
    server = Server(tiny_llama)

    def answered() -> float:
        page = httpx.get(server.url + "/metrics", timeout=30).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in page.splitlines()
                   if line.startswith("vllm:request_success_total{"))

    try:
        code, through, err = run_batch("-m", str(tiny_llama), input=as_input(lines))
        assert code == 0, err
        assert answered() == 2
        code, here, err = run_batch("-m", str(tiny_llama), "--no-server", input=as_input(lines))
        assert code == 0, err
        assert answered() == 2  # nothing more reached the server
    finally:
        server.stop()
    assert [comparable(x) for x in through] == [comparable(x) for x in here]
