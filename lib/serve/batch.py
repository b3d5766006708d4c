"""lm-batch: OpenAI batch files, each request answered by lm-serve's own app.

An input line is `{"custom_id", "method": "POST", "url", "body"}`. Its body is posted to its url on
lm-serve's Starlette app, in this process through httpx's ASGI transport (so validation, status
codes and bodies are lm-serve's, from the same code), or with --server to any OpenAI-compatible
server over HTTP. An output line is OpenAI's batch output:
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`; a line that is not
a request (not JSON, no custom_id, a method other than POST, an unknown url, a second use of a
custom_id) gets `"response": null` and `"error": {"code", "message", "line"}`. custom_id is what
--resume knows lines by; duplicates are found over the whole file, before --shard and --resume.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ..backends import warm
from ..engine.scheduler import SchedulerSettings
from ..errors import UsageError
from ..records.jsonl import Item
from ..records.pipe import JsonlSink, PipeSettings, run_records, say
from ..records.runner import Finished
from .roster import ModelRoster, RosterSettings

URLS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
KEY = "custom_id"
_PROBLEM = "\0batch-problem"  # an input line that is not a request: (code, message), set before the job narrows it


@dataclass(frozen=True)
class BatchRun:
    """One lm-batch run: the model lm-serve's app would serve (or a server), over which lines."""

    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    pipe: PipeSettings = field(default_factory=PipeSettings)
    server: str | None = None  # post to this server instead of the app in this process
    no_server: bool = False  # never a warm lm-serve found in lmpipe's home: the app in this process
    api_key: str | None = None  # sent to the server as `Authorization: Bearer KEY`

    def __post_init__(self) -> None:
        if self.pipe.job.key != KEY:
            raise UsageError("lm-batch's --resume knows lines by custom_id")
        if self.server and self.scheduler.chat_template is not None:
            raise UsageError("--chat-template applies in this process (drop --server)")


def problem(item: Item, code: str, message: str) -> Item:
    return Item(item.line, {**(item.record or {}), _PROBLEM: [code, message]})


def checked(items: Iterable[Item]) -> Iterator[Item]:
    """Every input line, those that are not requests marked with why (duplicates over the whole file)."""
    seen: set[str] = set()
    for item in items:
        record = item.record
        if not item.ok or record is None:
            yield Item(item.line, {_PROBLEM: ["invalid_json", item.error or "not a JSON object"]})
            continue
        custom_id = record.get(KEY)
        if not isinstance(custom_id, str) or not custom_id:
            yield problem(item, "missing_custom_id", "`custom_id` must be a non-empty string")
        elif custom_id in seen:
            yield problem(item, "duplicate_custom_id", f"custom_id {custom_id!r} is used by an earlier line")
        elif record.get("method") != "POST":
            seen.add(custom_id)
            yield problem(item, "invalid_method", "`method` must be POST")
        elif record.get("url") not in URLS:
            seen.add(custom_id)
            yield problem(item, "invalid_url", f"`url` must be one of {', '.join(URLS)}")
        elif isinstance(record.get("body"), dict) and record["body"].get("stream"):
            seen.add(custom_id)
            yield problem(item, "invalid_request", "`stream` is not supported in a batch")
        else:
            seen.add(custom_id)
            yield item


def output_line(custom_id: Any, response: dict[str, Any] | None, error: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": "batch_req_" + uuid.uuid4().hex, "custom_id": custom_id, "response": response, "error": error}


class BatchTask:
    """Posts a batch of lines at once (the scheduler batches the generations) and writes their answers."""

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop):
        self.client, self.loop = client, loop

    async def post(self, item: Item) -> Finished:
        record = item.record or {}
        if _PROBLEM in record:
            code, message = record[_PROBLEM]
            custom_id = record.get(KEY) if isinstance(record.get(KEY), str) else None
            error = {"code": code, "message": message, "line": item.line}
            return Finished(item, output_line(custom_id, None, error), failed=True)
        response = await self.client.post(record["url"], content=orjson.dumps(record.get("body")),
                                          headers={"content-type": "application/json"})
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": response.text[:1000], "type": "server_error", "code": None}}
        request_id = response.headers.get("x-request-id") or "req_" + uuid.uuid4().hex
        answer = {"status_code": response.status_code, "request_id": request_id, "body": body}
        return Finished(item, output_line(record[KEY], answer, None), failed=response.status_code != 200)

    def process(self, batch: list[Item]) -> Iterator[Finished]:
        async def all_of() -> list[Finished]:
            return list(await asyncio.gather(*(self.post(item) for item in batch)))

        yield from self.loop.run_until_complete(all_of())


def client_for(r: BatchRun, roster: Any) -> Any:
    # httpx and the app (starlette) inside the functions: lm-batch's option checks import this
    # module, and a usage error answers without either.
    import httpx

    timeout = httpx.Timeout(None, connect=30)
    if r.server:
        base = r.server.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {r.api_key}"} if r.api_key else None
        return httpx.AsyncClient(base_url=base, timeout=timeout, headers=headers)
    from .app import create_app

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(roster)), base_url="http://lm-serve",
                             timeout=timeout)


def warm_server(r: BatchRun) -> Any:
    """A running lm-serve whose default model is this run's, with the same settings: a line that
    names no model must get the same model there as here (lmpipe.backends.warm)."""
    return warm.find(warm.holds(r.scheduler.model.ref().id, r.scheduler.model, r.scheduler.decoding,
                                r.scheduler.chat_template), default=True)


def run(r: BatchRun) -> int:
    job = r.pipe.job.open()  # an existing --output without --resume fails here, before the model loads
    if r.server is None and not r.no_server and (found := warm_server(r)):
        r = replace(r, server=found.url, api_key=found.token)
        say("lm-batch", f"posting to the lm-serve running at {found.url} (--no-server: load the model here)")
    # In-process the generation model loads at the first chat or completion line, and stays.
    # A line naming another model loads it beside the first, as lm-serve would (lmpipe.serve.roster).
    kept = replace(r.scheduler, keep_alive=0)
    roster = None if r.server else ModelRoster(RosterSettings((kept,), on_request=kept), lambda m: say("lm-batch", m))
    loop = asyncio.new_event_loop()
    client = client_for(r, roster)
    try:
        task = BatchTask(client, loop)
        return run_records("lm-batch", task.process, JsonlSink(), r.pipe.batch_size or 8, r.pipe.progress,
                           job=job, whole_input=checked)
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()
        if roster is not None:
            roster.close()
