"""lm-generate's task: records in, records with generated text, stats and manifest out."""

from __future__ import annotations

from typing import Any

from ..backends.generate import GenerateSettings, GenerateTask
from ..chat.prompts import PromptSettings
from ..chat.tools import check_choice
from ..engine.constrain import constraint_from_options
from ..engine.decoding import decoding_from_options
from ..engine.generation import Token
from ..engine.sampling import Sampling
from ..records.jsonl import Item


def settings_from_options(o: dict[str, Any]) -> GenerateSettings:
    return GenerateSettings(
        prompt=PromptSettings(field=o["field"], system=o["system"], raw=o["raw"], prefix=o.get("prefix") or ""),
        sampling=Sampling(
            temperature=o["temperature"], top_p=o["top_p"], top_k=o["top_k"],
            repetition_penalty=o["repetition_penalty"], max_new_tokens=o["max_new_tokens"],
            seed=o["seed"], stop=tuple(o["stop"]),
        ),
        out=o["out"],
        top_probs=o["top_probs"],
        ttnt=o["ttnt"],
        constraint=constraint_from_options(o.get("json_schema"), o.get("regex"), o.get("choice") or ()),
        tool_choice=check_choice(o.get("tool_choice") or "auto"),
        decoding=decoding_from_options(o),
    )


def stream_event(item: Item, t: Token) -> dict[str, Any]:
    event: dict[str, Any] = {"event": "token", "line": item.line, "id": t.id, "text": t.text}
    if t.p is not None:
        event["p"] = t.p
    return event


def run(tty: bool, prompt: str | None = None, **o: Any) -> int:
    """lm-generate: settings and model first (fail fast), then stdin (or PROMPT) to stdout."""
    import io
    import sys

    from ..models.loading import ModelSettings, load
    from ..records.job import JobSettings
    from ..records.pipe import JsonlSink, batch_size_for, run_records
    from ..terminal.display import GenerateTtySink

    settings = settings_from_options(o)
    job = JobSettings.from_options(o).open()  # an existing --output without --resume fails here
    tty = tty and not job.to_file
    model_settings = ModelSettings.from_options(o)
    if o.get("server"):
        from ..backends.remote import RemoteGenerateTask, ServerClient
        from ..errors import UsageError

        if o["stream"]:
            raise UsageError("--stream needs in-process generation (drop --server)")
        task: Any = RemoteGenerateTask(ServerClient(o["server"]), o["model"], settings)
    else:
        task = GenerateTask(load(model_settings), settings)
    if tty:
        sink: Any = GenerateTtySink(quiet=o["quiet"], boxes=settings.top_probs > 0, pause_ms=o["display_pause"])
    else:
        sink = JsonlSink(stream_events=o["stream"], encode_event=stream_event)
    source = io.BytesIO(prompt.encode() + b"\n") if prompt is not None else sys.stdin.buffer
    return run_records("lm-generate", task.process, sink, batch_size_for(o["batch_size"], tty), o["progress"], source, job)
