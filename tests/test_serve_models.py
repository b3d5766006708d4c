"""lm-serve with several models: each answers by name, keep-alive per model, --max-models evicts,
a model named only by a request loads (or is a 404), and /metrics labels every series by model."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import run_tool
from serve_helpers import Server


def greedy(folder, prompt: str, n: int = 8) -> str:
    """transformers' own greedy answer, chat template applied."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def chat(server: Server, model: str | None, prompt: str, n: int = 8) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": n, "temperature": 0}
    if model is not None:
        body["model"] = model
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def listed(server: Server) -> dict[str, dict]:
    return {m["id"]: m for m in httpx.get(server.url + "/v1/models", timeout=30).json()["data"]}


def wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def finished_by_model(page: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(page):
        if family.name == "vllm:request_success":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    model = sample.labels["model_name"]
                    out[model] = out.get(model, 0) + sample.value
    return out


def test_two_models_answer_by_name_and_the_idle_one_unloads_after_its_keep_alive(embedded, tiny_llama):
    s = Server(embedded, "-m", str(tiny_llama), "--model-option", str(tiny_llama), "keep-alive=1")
    try:
        models = listed(s)
        assert list(models) == [str(embedded), str(tiny_llama)]  # the first -m is the default, listed first
        assert not any(m["loaded"] for m in models.values())
        tiny = chat(s, str(tiny_llama), "Paris is")
        big = chat(s, None, "What is the capital of France?")  # no model: the default
        assert tiny.status_code == big.status_code == 200
        assert tiny.json()["model"] == str(tiny_llama) and big.json()["model"] == str(embedded)
        assert tiny.json()["choices"][0]["message"]["content"] == greedy(tiny_llama, "Paris is")
        assert big.json()["choices"][0]["message"]["content"] == greedy(embedded, "What is the capital of France?")
        models = listed(s)
        assert models[str(embedded)]["loaded"] and models[str(embedded)]["keep_alive_s"] == 300
        assert models[str(embedded)]["max_model_len"] == 8192
        # The tiny one's keep-alive is 1 s, the embedded one's the server's 300 s.
        assert wait_for(lambda: not listed(s)[str(tiny_llama)]["loaded"])
        assert listed(s)[str(embedded)]["loaded"]
        assert chat(s, str(tiny_llama), "Paris is").json()["choices"][0]["message"]["content"] == tiny.json()[
            "choices"][0]["message"]["content"]  # loaded again on its next request
    finally:
        s.stop()


def test_max_models_evicts_the_least_recently_used_idle_model(tiny_llama, tiny_llama_raw):
    s = Server(tiny_llama, "-m", str(tiny_llama_raw), "--max-models", "1")
    try:
        assert chat(s, str(tiny_llama), "Paris is").status_code == 200
        assert {k: m["loaded"] for k, m in listed(s).items()} == {str(tiny_llama): True, str(tiny_llama_raw): False}
        completion = httpx.post(s.url + "/v1/completions", timeout=120,
                                json={"model": str(tiny_llama_raw), "prompt": "Paris is", "max_tokens": 4})
        assert completion.status_code == 200
        assert {k: m["loaded"] for k, m in listed(s).items()} == {str(tiny_llama): False, str(tiny_llama_raw): True}
        assert chat(s, str(tiny_llama), "Paris is").status_code == 200  # and back
        assert {k: m["loaded"] for k, m in listed(s).items()} == {str(tiny_llama): True, str(tiny_llama_raw): False}
    finally:
        s.stop()
    said = s.proc.stderr.read().decode()
    assert f"unloaded {tiny_llama} (to make room for {tiny_llama_raw}: --max-models 1)" in said


def test_a_path_a_request_names_is_a_404_unless_allowed(tiny_llama, long_llama):
    """A request must not make the server read (or convert into its cache) whatever file it names."""
    from lmpipe.models.resolve import embedded_gguf

    s = Server(tiny_llama)
    try:
        for name in (str(long_llama), "/etc", str(embedded_gguf()), str(tiny_llama) + "/../" + long_llama.name):
            refused = chat(s, name, "Paris is")
            assert refused.status_code == 404, name
            assert refused.json()["error"]["message"] == f"The model `{name}` does not exist."
            embedded = httpx.post(s.url + "/v1/embeddings", json={"model": name, "input": "hi"}, timeout=60)
            assert embedded.status_code == 404, name
        assert chat(s, str(tiny_llama) + "/", "Paris is").status_code == 200  # a listed model by another spelling
        assert list(listed(s)) == [str(tiny_llama)]
        assert [m["root"] for m in httpx.get(s.url + "/v1/models", timeout=30).json()["data"]] == [str(tiny_llama)]
    finally:
        s.stop()


def test_a_model_only_a_request_names_loads_unless_listed_only(tiny_llama, long_llama):
    s = Server(tiny_llama, "--allow-model-paths")
    try:
        other = chat(s, str(long_llama), "Paris is")
        assert other.status_code == 200 and other.json()["model"] == str(long_llama)
        assert list(listed(s)) == [str(tiny_llama), str(long_llama)]
        # Tokens come from the model asked for: long_llama is tiny_llama with a longer context.
        tokens = httpx.post(s.url + "/tokenize", json={"model": str(long_llama), "prompt": "Paris"}, timeout=60).json()
        assert tokens["max_model_len"] == 2048
        counts = finished_by_model(httpx.get(s.url + "/metrics", timeout=30).text)
        assert counts == {str(tiny_llama): 0, str(long_llama): 1}
    finally:
        s.stop()
    strict = Server(tiny_llama, "--listed-only", "--allow-model-paths")
    try:
        refused = chat(strict, str(long_llama), "Paris is")
        assert refused.status_code == 404
        assert refused.json()["error"]["message"] == f"The model `{long_llama}` does not exist."
        assert list(listed(strict)) == [str(tiny_llama)]
        alias = httpx.post(strict.url + "/v1/embeddings", json={"model": "smollm2", "input": "hi"}, timeout=60)
        assert alias.status_code == 404 and alias.json()["error"]["code"] == "model_not_found"
    finally:
        strict.stop()


@pytest.mark.parametrize("args, message", [
    (("--model-option", "other", "quantize=int8"), "lm-serve: error: --model-option other: not one of the -m models"),
    (("--model-option", "MODEL", "speed=fast"),
     "lm-serve: error: --model-option MODEL speed=fast: expected KEY=VALUE with KEY one of"),
    (("--model-option", "MODEL", "quantize=int3"),
     "lm-serve: error: --model-option MODEL quantize=int3: quantize must be one of int8, int4"),
    (("--model-option", "MODEL", "keep-alive=soon"),
     "lm-serve: error: --model-option MODEL keep-alive=soon: keep-alive must be a number"),
])
def test_a_bad_model_option_is_a_usage_error(tiny_llama, args, message):
    args = tuple(str(tiny_llama) if a == "MODEL" else a for a in args)
    result = run_tool("lm-serve", "-m", str(tiny_llama), "--port", "0", *args)
    assert result.returncode == 2
    said = result.stderr.decode()
    assert said.startswith(message.replace("MODEL", str(tiny_llama))) and said.count("\n") == 1, said


def test_load_64_concurrent_requests_over_two_models_with_8_clients_killed_mid_stream(embedded, long_llama):
    """Mixed streaming and whole answers to both models at once; eight clients (four per model)
    leave after their first token. Every other request gets transformers' greedy answer, the
    server goes on serving, and /metrics counts each model's finished rows and its aborts."""
    import asyncio

    import orjson

    prompts = ["Paris is", "The quick brown fox", "Pipes connect", "What is the capital of France?"]
    expected = {str(m): [greedy(m, p) for p in prompts] for m in (embedded, long_llama)}
    s = Server(embedded, "-m", str(long_llama), "--max-queue", "128", "--max-batch", "8")

    async def one(client: httpx.AsyncClient, i: int) -> tuple[str, str | None]:
        model = str(embedded if i % 2 else long_llama)
        body = {"model": model, "messages": [{"role": "user", "content": prompts[i // 2 % 4]}], "temperature": 0}
        if i % 16 < 2:  # a client that leaves (4 per model): a grammar that forbids the end keeps its row decoding
            body.update(max_tokens=1500, regex="a{2000}", stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and '"content":"a' in line:
                        break  # the connection closes with the block: the client is gone
            return model, None
        body["max_tokens"] = 8
        if i % 4 >= 2:
            async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                parts = [orjson.loads(line[6:]) for line in [x async for x in r.aiter_lines()]
                         if line.startswith("data: ") and line != "data: [DONE]"]
            return model, "".join(p["choices"][0]["delta"].get("content") or "" for p in parts if p["choices"])
        r = await client.post("/v1/chat/completions", json=body)
        return model, r.json()["choices"][0]["message"]["content"]

    async def load() -> list[tuple[str, str | None]]:
        limits = httpx.Limits(max_connections=80, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=s.url, timeout=300, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(64)))

    try:
        answers = asyncio.run(load())
        for i, (model, text) in enumerate(answers):
            if i % 16 >= 2:
                assert text == expected[model][i // 2 % 4], (i, model)
        assert s.alive() and chat(s, str(long_llama), prompts[0]).json()["choices"][0]["message"]["content"] == \
            expected[str(long_llama)][0]
        from prometheus_client.parser import text_string_to_metric_families

        rows: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(httpx.get(s.url + "/metrics", timeout=30).text):
            if family.name == "vllm:request_success":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = (sample.labels["model_name"], sample.labels["finished_reason"])
                        rows[key] = rows.get(key, 0) + sample.value
        for model in (str(embedded), str(long_llama)):
            assert rows[(model, "abort")] == 4
        assert rows[(str(embedded), "stop")] + rows[(str(embedded), "length")] == 28
        assert rows[(str(long_llama), "stop")] + rows[(str(long_llama), "length")] == 29  # with the one after
    finally:
        s.stop()


def test_embedding_models_count_against_max_models_and_keep_alive(tiny_llama):
    """An embedding model is a loaded model like the others: it makes room under --max-models,
    is made room for, and unloads after the keep-alive."""
    s = Server(tiny_llama, "--max-models", "1", "--keep-alive", "3", "--preload")
    try:
        embedded = httpx.post(s.url + "/v1/embeddings", json={"input": "a cat"}, timeout=120)
        assert embedded.status_code == 200
        assert not listed(s)[str(tiny_llama)]["loaded"]  # unloaded to make room for the embedding model
        assert chat(s, None, "Paris is").status_code == 200  # and the embedding model for it
        assert wait_for(lambda: not listed(s)[str(tiny_llama)]["loaded"], 60)  # its keep-alive
        assert httpx.post(s.url + "/v1/embeddings", json={"input": "a dog"}, timeout=120).status_code == 200
        time.sleep(5)  # the embedding model's keep-alive passes too
    finally:
        s.stop()
    said = s.proc.stderr.read().decode()
    assert f"unloaded {tiny_llama} (to make room for all-minilm-l6-v2: --max-models 1)" in said
    assert f"unloaded all-minilm-l6-v2 (to make room for {tiny_llama}: --max-models 1)" in said
    assert "unloaded all-minilm-l6-v2 after 3 s idle" in said
