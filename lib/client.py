"""Tools talking to a server: lm-serve, or any OpenAI-compatible one (vLLM, llama.cpp, Ollama).

A tool uses a server when given `--server URL` or `LMPIPE_SERVER=URL` (URL with or without
/v1). It sends each record as a chat request (or a plain completion with --raw), a batch's
records at once so the server can batch them, and rebuilds the record it would have written
in-process: same text, same `manifest`, `stats` from the server's timings. No torch is
imported on this side, so a tool in a pipeline starts in a fraction of a second.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterator

from .errors import LmpipeError, RecordError, UsageError
from .prompts import PromptSettings, messages_of, text_of
from .reasoning import split_reasoning
from .records import Item, error_record
from .runner import Finished, Streamed


class ServerUnavailable(LmpipeError):
    """No server answers at the URL given (exit code 1)."""


def api_base(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url if url.endswith("/v1") else url + "/v1"


class ServerClient:
    def __init__(self, url: str, timeout: float = 600.0, retries: int = 30):
        import httpx

        self.base = api_base(url)
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=5.0), limits=httpx.Limits(max_connections=64))
        self.retries = retries

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        for _ in range(self.retries):
            try:
                response = self.http.post(self.base + path, json=payload)
            except httpx.TransportError as exc:
                raise ServerUnavailable(f"no server at {self.base} ({type(exc).__name__}: {exc})") from None
            if response.status_code == 503:  # busy: wait as it asks, then try again
                time.sleep(float(response.headers.get("Retry-After", "1") or 1))
                continue
            data = response.json()
            if response.status_code != 200:
                raise RecordError(f"server: {data.get('error', {}).get('message', response.text)}")
            return data
        raise RecordError(f"server: still busy after {self.retries} tries")

    def models(self) -> list[str]:
        import httpx

        try:
            response = self.http.get(self.base + "/models")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise ServerUnavailable(f"no server at {self.base} ({type(exc).__name__}: {exc})") from None
        return [m["id"] for m in response.json().get("data", [])]

    def complete(self, payload: dict[str, Any], chat: bool) -> dict[str, Any]:
        return self._post("/chat/completions" if chat else "/completions", payload)


def request_for(record: dict[str, Any], prompt: PromptSettings) -> tuple[dict[str, Any], bool]:
    """The request body for one record (without model and sampling), and whether it is chat."""
    if prompt.raw:
        text = text_of(record, prompt.field)
        return {"prompt": f"{prompt.system}\n\n{text}" if prompt.system else text}, False
    return {"messages": messages_of(record, prompt)}, True


def stats_of(response: dict[str, Any]) -> dict[str, Any]:
    ours = response.get("lmpipe", {}).get("stats")
    if ours:
        return ours
    u, t = response.get("usage", {}), response.get("timings", {})  # another OpenAI-compatible server
    return {
        "input_tokens": u.get("prompt_tokens"), "output_tokens": u.get("completion_tokens"),
        "ttft_s": round(t["prompt_ms"] / 1000, 6) if "prompt_ms" in t else None,
        "tokens_per_s": t.get("predicted_per_second"), "total_s": None,
        "finish_reason": response["choices"][0].get("finish_reason"),
    }


class RemoteGenerateTask:
    """GenerateTask's twin for a server: the same `process` contract, the same records."""

    def __init__(self, client: ServerClient, model: str, settings: Any):
        from dataclasses import replace

        self.client, self.model = client, model
        self.settings = replace(settings, sampling=settings.sampling.with_seed())
        if settings.top_probs:
            raise UsageError("--top-probs needs in-process generation (drop --server)")
        served = client.models()
        if served and model not in served:
            self.model = served[0] if len(served) == 1 else model

    def payload(self, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        if "tools" in record:
            raise RecordError("records with `tools` need in-process generation (drop --server)")
        body, chat = request_for(record, self.settings.prompt)
        s = self.settings.sampling
        body.update(model=self.model, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                    repetition_penalty=s.repetition_penalty, max_tokens=s.max_new_tokens, seed=s.seed,
                    stop=list(s.stop))
        return body, chat

    def manifest(self, response: dict[str, Any]) -> dict[str, Any]:
        part = response.get("lmpipe") or {}
        identity = part.get("identity") or {"model": response.get("model", self.model), "kind": "server"}
        from .tasks.generate import run_settings

        return {**identity, **run_settings(self.settings), "device": part.get("device"), "dtype": part.get("dtype"),
                "versions": part.get("versions")}

    def output(self, item: Item, response: dict[str, Any], chat: bool) -> dict[str, Any]:
        choice = response["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        record = dict(item.record or {})
        reasoning, answer = split_reasoning(text or "")
        record[self.settings.out] = answer
        if reasoning is not None:
            record["reasoning"] = reasoning
        record["stats"] = stats_of(response)
        record["manifest"] = self.manifest(response)
        return record

    def one(self, item: Item) -> Finished:
        try:
            body, chat = self.payload(item.record or {})
            return Finished(item, self.output(item, self.client.complete(body, chat), chat))
        except RecordError as exc:
            return Finished(item, error_record(item, str(exc)), failed=True)

    def process(self, batch: list[Item]) -> Iterator[Finished | Streamed]:
        with ThreadPoolExecutor(max_workers=max(1, len(batch))) as pool:
            futures = [pool.submit(self.one, item) for item in batch]
            for future in as_completed(futures):
                yield future.result()
