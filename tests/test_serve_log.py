"""lm-serve --log: one JSONL record per generation request, answers and errors alike (a client
that left mid-stream too), that lm-stats summarises per model; the file rotates whole records."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from conftest import jsonl, run_tool
from serve_helpers import JSON, Server

CHAT = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def logged(long_llama, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-log") / "serve.log"
    s = Server(long_llama, "--log", str(path))
    yield s, path
    s.stop()


def records(path, count: int) -> list[dict]:
    """The log's records once it holds `count` (a stream's is written as it ends, after its last byte)."""
    deadline = time.monotonic() + 120
    while len(lines := path.read_bytes().splitlines()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return [orjson.loads(line) for line in lines]


def streamed(url: str, body: dict) -> dict:
    """The finishing chunk of a one-choice stream (it carries the lmpipe part)."""
    with httpx.stream("POST", url, json=body, timeout=300) as response:
        chunks = [orjson.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    texts = "".join(c["choices"][0].get("text", "") for c in chunks if c["choices"])
    return {"text": texts, **next(c for c in chunks if "lmpipe" in c)}


def test_one_record_per_request_and_lm_stats_reads_them(logged):
    server, path = logged
    url = server.url
    chat = httpx.post(url + "/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4, "temperature": 0},
                      timeout=300).json()
    stream = streamed(url + "/v1/completions", {"prompt": "The cat", "max_tokens": 5, "stream": True, "seed": 1})
    many = httpx.post(url + "/v1/completions", json={"prompt": "A dog", "max_tokens": 3, "n": 2, "seed": 2},
                      timeout=300).json()
    refused = httpx.post(url + "/v1/chat/completions", json={"messages": CHAT, "best_of": 2}, timeout=60)
    broken = httpx.post(url + "/v1/completions", content=b"{not json", headers=JSON, timeout=60)
    assert refused.status_code == broken.status_code == 400
    # A client that leaves mid-stream (the grammar forbids an early end).
    with httpx.stream("POST", url + "/v1/completions", json={"prompt": "a", "max_tokens": 1500, "regex": "a{2000}",
                                                           "stream": True}, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and orjson.loads(line[6:])["choices"][0]["text"]:
                break

    got = records(path, 6)
    assert len(got) == 6
    served = chat["model"]
    first, second, third, fourth, fifth, sixth = got
    for record in got:
        assert record["client"].startswith("127.0.0.1:") and record["time"].endswith("Z")
        assert record["manifest"]["model"] == served
    assert first["endpoint"] == "/v1/chat/completions" and first["status"] == 200 and first["id"] == chat["id"]
    assert first["messages"] == CHAT and first["generated"] == chat["choices"][0]["message"]["content"]
    assert first["stats"] == chat["lmpipe"]["stats"] and first["usage"] == chat["usage"]
    assert first["manifest"]["sampling"] == chat["lmpipe"]["sampling"]
    assert second["prompt"] == "The cat" and second["generated"] == stream["text"] and second["status"] == 200
    assert second["stats"] == stream["lmpipe"]["stats"]
    assert third["choices"] == [c["text"] for c in many["choices"]] and third["generated"] == many["choices"][0]["text"]
    assert third["usage"] == many["usage"]
    assert (fourth["status"], fourth["code"], fourth["error"]) == (
        400, "unsupported_parameter", refused.json()["error"]["message"])
    assert fourth["messages"] == CHAT and "generated" not in fourth
    assert (fifth["status"], fifth["code"], fifth["endpoint"]) == (400, "invalid_json", "/v1/completions")
    assert sixth["status"] == 499 and sixth["error"] and sixth["prompt"] == "a"

    result = run_tool("lm-stats", input=path.read_bytes())
    assert result.returncode == 0, result.stderr
    report = jsonl(result.stdout)[0]
    assert report["records"] == 6 and report["errors"] == 3
    (model,) = report["models"]
    ttfts = sorted(r["stats"]["ttft_s"] for r in (first, second, third))
    assert model["model"] == served and model["count"] == 6 and model["errors"] == 3
    assert model["ttft_s"]["n"] == 3 and model["ttft_s"]["p50"] == ttfts[1] and model["ttft_s"]["max"] == ttfts[2]


def test_the_log_rotates_by_size_keeping_whole_records(tmp_path):
    from lmpipe.serve.requestlog import RequestLog

    path = tmp_path / "serve.log"
    log = RequestLog(str(path), max_bytes=1000, backups=2)
    for i in range(60):
        log.write({"n": i, "text": "é" * 40})
    log.close()
    files = [tmp_path / "serve.log.2", tmp_path / "serve.log.1", path]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in files)
    kept = [orjson.loads(line) for p in files for line in p.read_bytes().splitlines()]
    assert [r["n"] for r in kept] == list(range(60 - len(kept), 60))  # the newest, in order, none cut
    assert all(p.stat().st_size <= 1000 for p in files)
