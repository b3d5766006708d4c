"""lm-serve's /metrics: Prometheus text that prometheus_client parses, with vLLM's names and types;
after N requests the counters equal the usage the responses reported, the histograms hold N
observations made of the responses' own stats, the prefix cache's hits are counted, and a
client that leaves mid-stream is counted as an abort."""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from serve_helpers import Server

TYPES = {
    "vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge", "vllm:kv_cache_usage_perc": "gauge",
    "vllm:prefix_cache_queries": "counter", "vllm:prefix_cache_hits": "counter",
    "vllm:prompt_tokens": "counter", "vllm:generation_tokens": "counter", "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram", "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
LONG = "Tell me everything you know about cats, dogs and the pipes that connect small tools together."


@pytest.fixture(scope="module")
def server(long_llama):
    s = Server(long_llama, "--max-batch", "2")
    yield s
    s.stop()


def scrape(server) -> dict[str, dict]:
    """Family name -> {"type", "samples": {(sample name, sorted labels): value}}, as prometheus_client parses it."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(server.url + "/metrics", timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {f.name: {"type": f.type, "samples": {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}}
            for f in text_string_to_metric_families(response.text)}


def value(metrics: dict, family: str, sample: str | None = None, **labels: str) -> float:
    """One sample's value: summed over the series whose labels include `labels`."""
    found = [v for (name, have), v in metrics[family]["samples"].items()
             if name == (sample or family) and set(labels.items()) <= set(have)]
    assert found, (family, sample, labels)
    return sum(found)


def ask(server, path: str, body: dict) -> tuple[dict, list[dict]]:
    """A request's usage and each choice's lmpipe stats, streamed or not."""
    if not body.get("stream"):
        data = httpx.post(server.url + path, json=body, timeout=300).json()
        return data["usage"], [data["lmpipe"]["stats"]]
    usage, stats = None, []
    with httpx.stream("POST", server.url + path, json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if "lmpipe" in chunk:
                stats.append(chunk["lmpipe"]["stats"])
            if chunk.get("usage") and not chunk["choices"]:
                usage = chunk["usage"]
    return usage, stats


REQUESTS = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a cat"}], "max_tokens": 7, "stream": True,
                              "stream_options": {"include_usage": True}}),
    ("/v1/completions", {"prompt": "The cat", "max_tokens": 4, "temperature": 0}),
    ("/v1/completions", {"prompt": "A dog and", "max_tokens": 6, "stream": True, "seed": 3,
                         "stream_options": {"include_usage": True}}),
    ("/v1/completions", {"prompt": "Pipes", "max_tokens": 3, "stop": ["e"], "temperature": 0}),
]


def test_counters_and_histograms_equal_what_was_answered(server):
    before = scrape(server)
    assert {name: before[name]["type"] for name in TYPES} == TYPES
    served = httpx.get(server.url + "/v1/models", timeout=30).json()["data"][0]["id"]
    assert all(dict(key[1])["model_name"] == served and dict(key[1])["engine"] == "0"
               for name in TYPES for key in before[name]["samples"])
    assert value(before, "vllm:request_success", "vllm:request_success_total") == 0
    reasons = {dict(k[1])["finished_reason"] for k in before["vllm:request_success"]["samples"]}
    assert reasons == {"stop", "length", "abort"}

    answered = [ask(server, path, body) for path, body in REQUESTS]
    after = scrape(server)
    n = len(REQUESTS)
    stats = [s for _, choices in answered for s in choices]
    assert len(stats) == n
    prompt_tokens = sum(u["prompt_tokens"] for u, _ in answered)
    assert value(after, "vllm:prompt_tokens", "vllm:prompt_tokens_total") == prompt_tokens
    assert value(after, "vllm:generation_tokens", "vllm:generation_tokens_total") == sum(
        u["completion_tokens"] for u, _ in answered)
    for reason in ("stop", "length"):
        assert value(after, "vllm:request_success", "vllm:request_success_total", finished_reason=reason) == sum(
            FINISH[s["finish_reason"]] == reason for s in stats)
    assert value(after, "vllm:request_success", "vllm:request_success_total", finished_reason="abort") == 0
    timed = (("vllm:time_to_first_token_seconds", "ttft_s"), ("vllm:e2e_request_latency_seconds", "total_s"))
    for name, field in timed:
        assert value(after, name, name + "_count") == n
        assert value(after, name, name + "_bucket", le="+Inf") == n
        assert value(after, name, name + "_sum") == pytest.approx(sum(s[field] for s in stats), abs=1e-5)
    # One gap per token after the first, the end of sequence included (it took a step too).
    gaps = sum(s["output_tokens"] - 1 + (s["finish_reason"] == "eos") for s in stats)
    assert value(after, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_count") == gaps
    assert value(after, "vllm:inter_token_latency_seconds", "vllm:inter_token_latency_seconds_sum") == pytest.approx(
        sum(s["total_s"] - s["ttft_s"] for s in stats), abs=1e-5)
    # Idle again: nothing running or waiting, the KV cache's rows free.
    for gauge in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"):
        assert value(after, gauge) == 0
    # Every prompt was looked up in the prefix cache, token by token.
    assert value(after, "vllm:prefix_cache_queries", "vllm:prefix_cache_queries_total") == sum(
        u["prompt_tokens"] for u, _ in answered)


def test_a_repeated_prompt_is_a_prefix_cache_hit(server):
    body = {"messages": [{"role": "user", "content": LONG}], "max_tokens": 2, "temperature": 0}
    ask(server, "/v1/chat/completions", body)
    before = scrape(server)
    usage, _ = ask(server, "/v1/chat/completions", body)
    after = scrape(server)

    def delta(name: str) -> float:
        return value(after, name, name + "_total") - value(before, name, name + "_total")

    assert usage["prompt_tokens"] > 8
    assert delta("vllm:prefix_cache_queries") == usage["prompt_tokens"]
    assert delta("vllm:prefix_cache_hits") == usage["prompt_tokens"] - 1  # the last token is computed for its logits


def test_a_client_that_leaves_mid_stream_is_an_abort(server):
    before = scrape(server)
    # The grammar forbids an end before max_tokens: the row is still decoding when its client leaves.
    body = {"prompt": "a", "max_tokens": 1500, "regex": "a{2000}", "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and orjson.loads(line[6:])["choices"][0]["text"]:
                break  # a token came: the row runs; leave
    after = scrape_when_idle(server)
    success = "vllm:request_success_total"
    assert value(after, "vllm:request_success", success, finished_reason="abort") == 1 + value(
        before, "vllm:request_success", success, finished_reason="abort")
    for reason in ("stop", "length"):
        assert value(after, "vllm:request_success", success, finished_reason=reason) == value(
            before, "vllm:request_success", success, finished_reason=reason)
    assert value(after, "vllm:num_requests_running") == 0


def scrape_when_idle(server, timeout: float = 120) -> str:
    """/metrics once no request is running (an abandoned row freed), or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        after = scrape(server)
        if value(after, "vllm:num_requests_running") == 0 or time.monotonic() > deadline:
            return after
        time.sleep(0.2)


def test_a_client_that_leaves_before_a_whole_answer_is_an_abort(server):
    """Not streamed: the rows stop when the client goes, rather than generate for nobody."""
    import json
    import socket

    before = scrape(server)
    body = json.dumps({"prompt": "a", "max_tokens": 1500, "regex": "a{2000}"}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head + body)
        deadline = time.monotonic() + 120
        while value(scrape(server), "vllm:num_requests_running") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # until its row decodes; then leave
    after = scrape_when_idle(server)
    success = "vllm:request_success_total"
    assert value(after, "vllm:request_success", success, finished_reason="abort") == 1 + value(
        before, "vllm:request_success", success, finished_reason="abort")
    assert value(after, "vllm:request_success", success, finished_reason="length") == value(
        before, "vllm:request_success", success, finished_reason="length")


def test_each_app_has_its_own_registry(long_llama):
    """Two apps in one process (lm-batch's in-process app beside another): each page counts its own."""
    from lmpipe.engine.scheduler import SchedulerSettings
    from lmpipe.models.loading import ModelSettings
    from lmpipe.serve.metrics import ServerMetrics
    from lmpipe.serve.roster import ModelRoster, RosterSettings

    roster = ModelRoster(RosterSettings((SchedulerSettings(model=ModelSettings(str(long_llama))),)))
    try:
        one, two = ServerMetrics(roster), ServerMetrics(roster)
        one.of(roster.default).aborted(2)
        assert b'vllm:request_success_total{engine="0",finished_reason="abort"' in one.exposition()[0]
        assert b'finished_reason="abort",model_name=' in one.exposition()[0]
        page = two.exposition()[0].decode()
        assert [line for line in page.splitlines() if 'finished_reason="abort"' in line][0].endswith(" 0.0")
    finally:
        roster.close()


def test_the_man_page_lists_every_metric_under_its_type():
    from pathlib import Path

    from lmpipe.bin.serve import main
    from lmpipe.serve.metrics import METRICS

    text = " ".join(main.help.split())
    gauges, rest = text.split("Gauges:")[1].split("Counters:")
    counters, histograms = rest.split("Histograms:")
    listed = {"gauge": gauges, "counter": counters, "histogram": histograms.split(". ")[0]}
    page = (Path(__file__).parent.parent / "man" / "lm-serve.1").read_text()
    for name, (kind, _) in METRICS.items():
        shown = name + "_total" if kind == "counter" else name
        assert shown in listed[kind] and shown in page, name
