"""lm-serve: the OpenAI API with a real client, batching, bounds, bad requests, and tools on it."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import jsonl, run_tool
from serve_helpers import JSON, Server, free_port

PROMPTS = ["The quick brown fox", "Paris is the capital of", "Pipes connect small tools", "Hola mundo"]


@pytest.fixture(scope="module")
def server(tiny_llama):
    s = Server(tiny_llama, "--max-batch", "8", "--max-queue", "128", "--preload")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def expected(tiny_llama):
    """What transformers' own generate answers, greedy, one prompt at a time (chat template applied)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)

    def answer(prompt: str, n: int = 12, chat: bool = True) -> str:
        if chat:
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                           tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        else:
            ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return answer


def test_models_lists_the_served_model(openai_client, tiny_llama):
    ids = [m.id for m in openai_client.models.list().data]
    assert ids == [str(tiny_llama)]


def test_chat_and_completion_are_token_identical_to_transformers(openai_client, tiny_llama, expected):
    chat = openai_client.chat.completions.create(
        model=str(tiny_llama), messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == expected(PROMPTS[0])
    assert chat.usage.completion_tokens <= 12 and chat.usage.prompt_tokens > 0
    done = openai_client.completions.create(model=str(tiny_llama), prompt=PROMPTS[1], max_tokens=12, temperature=0)
    assert done.choices[0].text == expected(PROMPTS[1], chat=False)


def test_streaming_gives_the_same_text(openai_client, tiny_llama, expected):
    stream = openai_client.chat.completions.create(
        model=str(tiny_llama), messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected(PROMPTS[2])
    assert chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    pieces = openai_client.completions.create(model=str(tiny_llama), prompt=PROMPTS[3], max_tokens=10, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].text for c in pieces if c.choices) == expected(PROMPTS[3], 10, chat=False)


def test_64_concurrent_requests_all_answered_correctly(server, tiny_llama, expected):
    from openai import AsyncOpenAI

    want = {p: expected(p, 8) for p in PROMPTS}

    async def main():
        client = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        calls = [client.chat.completions.create(model=str(tiny_llama),
                                                messages=[{"role": "user", "content": PROMPTS[i % 4]}],
                                                max_tokens=8, temperature=0) for i in range(64)]
        return await asyncio.gather(*calls)

    answers = asyncio.run(main())
    assert [a.choices[0].message.content for a in answers] == [want[PROMPTS[i % 4]] for i in range(64)]


@pytest.mark.parametrize("body, code", [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "invalid_type"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "invalid_value"),
    (b'{"messages": "hi"}', "invalid_type"),
    (b'{"messages": [{"role": "wizard", "content": "hi"}]}', "invalid_messages"),
])
def test_malformed_requests_are_400s_and_the_server_carries_on(server, body, code):
    response = httpx.post(server.url + "/v1/chat/completions", content=body, headers=JSON, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert server.alive()


def test_a_model_that_does_not_resolve_is_a_404_as_vllm_answers(server):
    response = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                          json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 404
    assert response.json()["error"] == {"message": "The model `no-such-model` does not exist.",
                                        "type": "invalid_request_error", "code": "model_not_found"}
    assert server.alive()


def test_oversized_prompt_is_a_400(server):
    prompt = list(range(10, 310))  # the tiny model's context is 256
    response = httpx.post(server.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4}, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_clients_killed_mid_stream_leave_it_serving(server, openai_client, tiny_llama, expected):
    for _ in range(4):
        with httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                          json={"prompt": PROMPTS[0], "max_tokens": 200, "temperature": 0, "stream": True}) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        # leaving the block closes the connection mid-stream
    chat = openai_client.chat.completions.create(
        model=str(tiny_llama), messages=[{"role": "user", "content": PROMPTS[1]}], max_tokens=12, temperature=0)
    assert chat.choices[0].message.content == expected(PROMPTS[1])


def test_a_full_queue_answers_503_with_retry_after(tiny_llama):
    small = Server(tiny_llama, "--max-batch", "1", "--max-queue", "1", "--preload")
    try:
        def call(_):
            return httpx.post(small.url + "/v1/completions", timeout=120,
                              json={"prompt": PROMPTS[0], "max_tokens": 60, "temperature": 0})

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(call, range(16)))
        codes = sorted(r.status_code for r in responses)
        assert codes[0] == 200 and codes[-1] == 503 and set(codes) == {200, 503}
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1" and busy.json()["error"]["code"] == "queue_full"
        assert small.alive()
    finally:
        small.stop()


def test_lm_generate_through_the_server_writes_the_same_records(server, tiny_llama):
    lines = "The quick brown fox\n" + '{"text": "Paris is the capital of", "id": 7}\n' + "{broken\n"
    args = ("-m", str(tiny_llama), "-n", "10", "--seed", "3")
    local = run_tool("lm-generate", *args, "--no-server", input=lines)  # not the warm server
    remote = run_tool("lm-generate", *args, "--server", server.url, input=lines)
    assert local.returncode == remote.returncode == 1  # the broken line is an error record in both
    ours, theirs = jsonl(local.stdout), jsonl(remote.stdout)
    timing = ("ttft_s", "tokens_per_s", "total_s")
    for a, b in zip(ours, theirs, strict=True):
        for r in (a, b):
            for key in timing:
                r.get("stats", {}).pop(key, None)
        assert a == b
    raw = run_tool("lm-generate", *args, "--raw", "--server", server.url, input=lines)
    assert [r.get("generated") for r in jsonl(raw.stdout)][:2] == [
        r.get("generated") for r in jsonl(run_tool("lm-generate", *args, "--raw", input=lines).stdout)][:2]


def test_a_model_an_agent_names_is_sent_by_name(server, tiny_llama):
    # The server serves one model: a record without an agent gets it, whatever -m says; a record
    # whose agent names another model is sent with that name (and refused), never quietly re-routed.
    lines = [{"text": "The quick"}, {"text": "brown", "agent": {"file": "a.toml", "model": "someone/else"}},
             {"text": "fox", "agent": {"file": "a.toml", "model": str(tiny_llama), "run": {"max_new_tokens": 2}}}]
    data = "".join(json.dumps(r) + "\n" for r in lines)
    result = run_tool("lm-generate", "--seed", "3", "--server", server.url, input=data)
    assert result.returncode == 1
    plain, other, named = jsonl(result.stdout)
    assert plain["manifest"]["model"] == named["manifest"]["model"] == str(tiny_llama)
    assert other["line"] == 2 and "The model `someone/else` does not exist." in other["error"]
    assert named["manifest"]["sampling"]["max_new_tokens"] == 2 and named["stats"]["output_tokens"] <= 2
    assert named["manifest"]["agent"]["applied"] == {"model": str(tiny_llama), "max_new_tokens": 2}


def test_what_only_in_process_generation_does_is_refused_through_a_server(server, tiny_llama):
    args = ("-m", str(tiny_llama), "-n", "4", "--server", server.url)
    for option in ("--stream", "--top-probs=2"):
        result = run_tool("lm-generate", *args, option, input="hi\n")
        assert result.returncode == 2 and b"needs in-process generation" in result.stderr


def test_a_server_that_is_not_there_is_one_line():
    result = run_tool("lm-generate", "--server", f"http://127.0.0.1:{free_port()}", input="hi\n")
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lm-generate: error: no server at http://127.0.0.1:")
    assert result.stdout == b""


def test_lm_bench_times_the_server_and_a_pipeline_through_it(server, tiny_llama):
    result = run_tool("lm-bench", "-m", str(tiny_llama), "--skip-generate", "--server", server.url,
                      "--pipeline", "2", "-r", "1")
    assert result.returncode == 0, result.stderr
    records = {r["case"]: r for r in jsonl(result.stdout)}
    assert records["server-ttft"]["seconds"]["min"] > 0
    assert records["pipeline"]["ok"] and records["pipeline-server"]["ok"]
    assert records["pipeline-server"]["records"] == 2
    assert records["pipeline"]["command"].endswith("(each with --no-server)")
    assert records["pipeline-server"]["command"].endswith("(each finding the warm server)")  # it holds -m's model


def test_a_text_model_server_leaves_a_records_image_fields_alone_as_in_process(server, tiny_llama):
    lines = json.dumps({"text": "The quick", "image": "/no/such/photo.png"}) + "\n"
    args = ("-m", str(tiny_llama), "-n", "4", "--seed", "2")
    here = run_tool("lm-generate", *args, "--no-server", input=lines)
    there = run_tool("lm-generate", *args, "--server", server.url, input=lines)
    assert here.returncode == there.returncode == 0
    assert jsonl(there.stdout)[0]["generated"] == jsonl(here.stdout)[0]["generated"]
    refused = run_tool("lm-generate", *args, "--server", server.url, "--image", "photo.png", input=lines)
    assert refused.returncode == 2
    assert refused.stderr.decode().strip() == \
        f"lm-generate: error: --image needs a vision-language model; the server's {tiny_llama} reads text only"


def test_the_engine_leaves_a_core_to_the_event_loop_unless_told(monkeypatch, tiny_llama):
    import torch

    from lmpipe.serve.run import engine_threads

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch's default: the cores it may use
    assert engine_threads(None) == 1 and engine_threads(3) == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert engine_threads(None) == 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert engine_threads(None) == 15
    s = Server(tiny_llama, "--threads", "2")
    s.stop()
    assert "(2 torch threads)" in s.proc.stderr.read().decode()
