"""lm-generate's task: records in, records with generated text, stats and manifest out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

from ..chat.answers import Plan, answer_fields, plan_for
from ..chat.prompts import PromptSettings, prompt_ids
from ..chat.tools import check_choice
from ..engine.constrain import Constraint, constraint_from_options, model_ll_tokenizer, row_constraints
from ..engine.decoding import Decoding, decoding_from_options
from ..engine.events import Completion, Token
from ..engine.generation import generate
from ..engine.sampling import Sampling
from ..errors import RecordError
from ..models.loading import LoadedModel
from ..records.jsonl import Item, error_record
from ..records.manifest import manifest
from ..records.runner import Finished, Streamed


@dataclass(frozen=True)
class GenerateSettings:
    prompt: PromptSettings = field(default_factory=PromptSettings)
    sampling: Sampling = field(default_factory=Sampling)
    out: str = "generated"
    top_probs: int = 0
    ttnt: int | None = None
    constraint: Constraint | None = None
    tool_choice: str = "auto"
    decoding: Decoding = field(default_factory=Decoding)


def context_length(lm: LoadedModel) -> int | None:
    config = lm.model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(value := getattr(config, name, None), int):
            return value
    return None


def stats(c: Completion, ttnt: int | None) -> dict[str, Any]:
    out = {
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "ttft_s": c.ttft_s,
        "tokens_per_s": c.tokens_per_s,
        "total_s": c.total_s,
        "finish_reason": c.finish_reason,
    }
    if ttnt:
        out["ttnt"] = ttnt
        out["ttnt_s"] = round(c.token_seconds[ttnt - 1], 6) if len(c.token_seconds) >= ttnt else None
    return out


def token_record(t: Token) -> dict[str, Any]:
    return {"id": t.id, "token": t.text, "p": t.p, "top": [asdict(x) for x in t.top]}


def run_settings(settings: GenerateSettings) -> dict[str, Any]:
    """The settings part of the manifest: the same in-process and through a server."""
    out: dict[str, Any] = {
        "sampling": settings.sampling.manifest(), "raw": settings.prompt.raw, "system": settings.prompt.system,
    }
    if settings.prompt.prefix:
        out["prefix"] = settings.prompt.prefix
    if settings.constraint is not None:
        out.update(settings.constraint.manifest())
    out["tool_choice"] = settings.tool_choice
    return out


def answer_record(item: Item, settings: GenerateSettings, plan: Plan, text: str, finish_reason: str,
                  stats: dict[str, Any], manifest: dict[str, Any], tokens: list[Any] | None = None) -> Finished:
    """The record an answer becomes, in-process or through a server. A constrained answer cut
    short (or not the call asked for) is an error record that keeps the text there is."""
    prefix = settings.prompt.prefix
    try:
        fields = answer_fields(plan, text, finish_reason, prefix)
    except RecordError as exc:
        return Finished(item, {**error_record(item, str(exc)), settings.out: prefix + text}, failed=True)
    record = dict(item.record or {})
    record[settings.out] = fields.pop("text")
    called = fields.pop("finish_reason", None)
    record.update(fields)
    if tokens is not None:
        record["tokens"] = tokens
    record["stats"] = {**stats, "finish_reason": called} if called else stats
    record["manifest"] = manifest
    return Finished(item, record)


class GenerateTask:
    """Holds a loaded model and turns batches of items into finished records and token events."""

    def __init__(self, lm: LoadedModel, settings: GenerateSettings):
        from ..engine.speculative import load_draft, manifest_part

        self.lm = lm
        self.settings = replace(settings, sampling=settings.sampling.with_seed())
        self.context = context_length(lm)
        self.draft = load_draft(settings.decoding, lm, self.settings.sampling)
        self.manifest = manifest(lm.identity, {**run_settings(self.settings), **manifest_part(settings.decoding, self.draft)},
                                 lm.device, lm.dtype)
        if settings.constraint is not None:
            model_ll_tokenizer(lm.model, lm.tokenizer)  # built now, so a problem shows before any record is read

    def prepare(self, item: Item) -> tuple[list[int], Plan]:
        record = item.record or {}
        plan = plan_for(record, self.settings.constraint, self.settings.tool_choice)
        ids = prompt_ids(record, self.lm.tokenizer, self.settings.prompt, plan.tools)
        if self.context and len(ids) >= self.context:
            raise RecordError(f"prompt is {len(ids)} tokens; the model's context is {self.context}")
        return ids, plan

    def output(self, item: Item, c: Completion, plan: Plan) -> Finished:
        tokens = [token_record(t) for t in c.tokens] if self.settings.top_probs else None
        return answer_record(item, self.settings, plan, c.text, c.finish_reason, stats(c, self.settings.ttnt),
                             self.manifest, tokens)

    def process(self, batch: list[Item]) -> Iterator[Finished | Streamed]:
        ready: list[tuple[Item, list[int]]] = []
        plans: list[Plan] = []
        for item in batch:
            try:
                ids, plan = self.prepare(item)
                ready.append((item, ids))
                plans.append(plan)
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)
        if not ready:
            return
        sampling = self.settings.sampling
        if self.context:
            room = self.context - max(len(ids) for _, ids in ready)
            sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room))
        events = generate(
            self.lm.model,
            self.lm.tokenizer,
            [ids for _, ids in ready],
            sampling,
            top_probs=self.settings.top_probs,
            device=self.lm.device,
            constraints=[row_constraints(self.lm.model, self.lm.tokenizer, p.grammar) for p in plans],
            decoding=self.settings.decoding,
            draft=self.draft.model if self.draft else None,
        )
        finished: set[int] = set()
        try:
            for event in events:
                item = ready[event.row][0]
                if isinstance(event, Token):
                    yield Streamed(item, event)
                else:
                    finished.add(event.row)
                    yield self.output(item, event, plans[event.row])
        except (RuntimeError, ValueError, IndexError) as exc:
            # The batch as a whole failed (out of memory, a model bug): every unfinished record says so.
            for row, (item, _) in enumerate(ready):
                if row not in finished:
                    yield Finished(item, error_record(item, f"generation failed: {exc}"), failed=True)


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

    from ..cli.edge import JsonlSink, run_records
    from ..cli.options import batch_size_for
    from ..models.loading import ModelSettings, load
    from ..records.job import JobSettings
    from ..terminal.display import GenerateTtySink

    settings = settings_from_options(o)
    job = JobSettings.from_options(o).open()  # an existing --output without --resume fails here
    tty = tty and not job.to_file
    model_settings = ModelSettings.from_options(o)
    if o.get("server"):
        from ..errors import UsageError
        from .remote import RemoteGenerateTask, ServerClient

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
