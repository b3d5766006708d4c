"""Tools talking to a server: lm-serve, or any OpenAI-compatible one (vLLM, llama.cpp, Ollama).

A tool uses a server when given `--server URL` or `LMPIPE_SERVER=URL` (URL with or without
/v1). It sends each record as a chat request (or a plain completion with --raw), a batch's
records at once so the server can batch them, and rebuilds the record it would have written
in-process: same text, same `manifest`, `stats` from the server's timings. Constraints go as
`response_format` (or lmpipe's `regex`, `choice`, `prefix`), a record's tools as `tools` and
`tool_choice`; the answer becomes `json`, `tool_calls`... through the same code as in-process.
No torch is imported on this side, so a tool in a pipeline starts in a fraction of a second.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Iterator

from ..chat.answers import Plan, plan_for
from ..chat.prompts import PromptSettings, messages_of, text_of
from ..errors import LmpipeError, RecordError, UsageError
from ..records.jsonl import Item, error_record
from ..records.runner import Finished, Streamed


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

    def __init__(self, client: ServerClient, model: str, settings: Any, by_name: bool = False):
        """`by_name`: send `model` as it is (a record's agent named it); otherwise a server that
        serves one model under another name is sent that name."""
        from dataclasses import replace

        self.client, self.model = client, model
        self.settings = replace(settings, sampling=settings.sampling.with_seed())
        if settings.top_probs:
            raise UsageError("--top-probs needs in-process generation (drop --server)")
        if not by_name:
            served = client.models()
            if served and model not in served:
                self.model = served[0] if len(served) == 1 else model

    def payload(self, record: dict[str, Any], plan: Plan) -> tuple[dict[str, Any], bool]:
        body, chat = request_for(record, self.settings.prompt)
        s = self.settings.sampling
        body.update(model=self.model, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                    repetition_penalty=s.repetition_penalty, presence_penalty=s.presence_penalty,
                    frequency_penalty=s.frequency_penalty, max_tokens=s.max_new_tokens, seed=s.seed,
                    stop=list(s.stop))
        body.update(answer_format(record, plan, self.settings.tool_choice))
        if self.settings.prompt.prefix:
            body["prefix"] = self.settings.prompt.prefix  # lmpipe's extension
        return body, chat

    def manifest(self, response: dict[str, Any]) -> dict[str, Any]:
        part = response.get("lmpipe") or {}
        identity = part.get("identity") or {"model": response.get("model", self.model), "kind": "server"}
        from .generate import run_settings

        return {**identity, **run_settings(self.settings), "device": part.get("device"), "dtype": part.get("dtype"),
                "versions": part.get("versions")}

    def output(self, item: Item, response: dict[str, Any], chat: bool, plan: Plan) -> Finished:
        from .generate import answer_record

        stats = stats_of(response)
        text = generated_text(response, chat, self.settings.prompt.prefix)
        return answer_record(item, self.settings, plan, text, stats.get("finish_reason") or "stop", stats,
                             self.manifest(response))

    def one(self, item: Item) -> Finished:
        try:
            record = item.record or {}
            plan = plan_for(record, self.settings.constraint, self.settings.tool_choice)
            body, chat = self.payload(record, plan)
            return self.output(item, self.client.complete(body, chat), chat, plan)
        except RecordError as exc:
            return Finished(item, error_record(item, str(exc)), failed=True)

    def process(self, batch: list[Item]) -> Iterator[Finished | Streamed]:
        with ThreadPoolExecutor(max_workers=max(1, len(batch))) as pool:
            futures = [pool.submit(self.one, item) for item in batch]
            for future in as_completed(futures):
                yield future.result()


def answer_format(record: dict[str, Any], plan: Plan, tool_choice: str) -> dict[str, Any]:
    """The request fields for the record's plan: its tools and tool choice, and the format asked for."""
    from ..chat.tools import CHOICES, record_choice

    out: dict[str, Any] = {}
    if "tools" in record:
        choice: Any = record_choice(record, tool_choice)
        if choice not in CHOICES:
            choice = {"type": "function", "function": {"name": choice}}
        out.update(tools=record["tools"], tool_choice=choice)
    c = plan.constraint  # None when the record calls tools
    if c is not None and c.kind == "json_schema":
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": c.schema}}
    elif c is not None:
        out.update({"regex": c.source} if c.kind == "regex" else {"choice": list(c.choices)})
    return out


def generated_text(response: dict[str, Any], chat: bool, prefix: str) -> str:
    """What the model wrote after the prefix; a tool call as the JSON it was decoded as."""
    choice = response["choices"][0]
    if chat and (calls := choice["message"].get("tool_calls")):
        f = calls[0]["function"]
        try:
            arguments = json.loads(f["arguments"])
        except (json.JSONDecodeError, TypeError):
            raise RecordError(f"server: tool call arguments are not JSON: {f.get('arguments')!r}") from None
        return json.dumps({"name": f["name"], "arguments": arguments}, ensure_ascii=False)
    text = (choice["message"]["content"] if chat else choice["text"]) or ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text
