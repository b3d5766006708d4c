"""lm-generate's task: records in, records with generated text, stats and manifest out."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from typing import Any

from ..backends import warm
from ..backends.agent import AgentTasks, in_process, through_server
from ..backends.generate import GenerateSettings, GenerateTask
from ..backends.remote import RemoteGenerateTask, ServerClient, ServerSettings
from ..engine.generation import Token
from ..errors import UsageError
from ..models.loading import ModelSettings, load
from ..records.jsonl import Item
from ..records.pipe import JsonlSink, PipeSettings, batch_size_for, run_records, say
from ..terminal.display import GenerateTtySink


@dataclass(frozen=True)
class GenerateRun:
    """One lm-generate run: what to generate, with which model (or server), over which records,
    shown how on a terminal."""

    settings: GenerateSettings = field(default_factory=GenerateSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    pipe: PipeSettings = field(default_factory=PipeSettings)
    prompt: str | None = None  # PROMPT: this one record instead of stdin
    server: ServerSettings | None = None  # generate through this server instead of in-process
    no_server: bool = False  # never through a server, not even a warm one recorded in lmpipe's home
    stream: bool = False  # in a pipe, token events before each record
    quiet: bool = False  # on a terminal, the text only
    display_pause: int = 0  # ms between tokens on a terminal with --top-probs
    given: frozenset[str] = frozenset()  # options typed on the command line: they win over a record's agent

    def __post_init__(self) -> None:
        if self.stream and self.server:
            raise UsageError("--stream needs in-process generation (drop --server)")
        if self.model.adapters and self.server:
            raise UsageError("--adapter applies in-process (drop --server, or serve it with lm-serve --lora)")


def stream_event(item: Item, t: Token) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "token", "line": item.line, "id": t.id, "text": t.text}
    if t.p is not None:
        event["p"] = t.p
    return event


@dataclass(frozen=True)
class WarmServer:
    url: str
    model_id: str
    token: str | None = None  # the server's, from its entry in lmpipe's home


def warm_server(r: GenerateRun) -> WarmServer | None:
    """A running lm-serve holding the model this run would load, with the same settings; None when
    there is none, or when the run asks for what only in-process generation does."""
    in_process_only = (r.stream, r.settings.top_probs, r.settings.prompt.chat_template is not None,
                       r.settings.sampling.reasoning_budget is not None)
    if any(in_process_only):
        return None
    model_id = r.model.ref().id
    found = warm.find(warm.holds(model_id, r.model, r.settings.decoding))
    return WarmServer(found.url, model_id, found.token) if found else None


def run(r: GenerateRun, tty: bool) -> int:
    """lm-generate: settings and model first (fail fast), then stdin (or PROMPT) to stdout."""
    job = r.pipe.job.open()  # an existing --output without --resume fails here
    tty = tty and not job.to_file
    warm = None if r.server or r.no_server else warm_server(r)
    batch_size = batch_size_for(r.pipe.batch_size, tty)
    if r.server and not r.no_server:
        base: Any = RemoteGenerateTask(ServerClient(r.server), r.model.model, r.settings)
        task = AgentTasks(base, through_server(base), r.given)
        batch_size = r.pipe.batch_size or r.server.concurrency  # a batch's requests are in flight at once
    elif warm:
        from ..backends.warm import agent_variants

        client = ServerClient(ServerSettings(warm.url, api_key=warm.token))
        base = RemoteGenerateTask(client, warm.model_id, r.settings)  # by id: it may serve several
        task = AgentTasks(base, agent_variants(base, r.model, warm.model_id), r.given)
        # Even in a pipe: where the records came from is never a silent redirect.
        say("lm-generate", f"answering through the lm-serve running at {warm.url} (--no-server: load the model here)")
    else:
        base = GenerateTask(load(r.model), r.settings)
        task = AgentTasks(base, in_process(base, r.model), r.given)
    if tty:
        sink: Any = GenerateTtySink(quiet=r.quiet, boxes=r.settings.top_probs > 0, pause_ms=r.display_pause)
    else:
        sink = JsonlSink(stream_events=r.stream, encode_event=stream_event)
    source = io.BytesIO(r.prompt.encode() + b"\n") if r.prompt is not None else sys.stdin.buffer
    return run_records("lm-generate", task.process, sink, batch_size, r.pipe.progress,
                       source, job)
