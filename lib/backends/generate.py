"""Records through the in-process generation loop: a record's prompt in, its answer, stats and manifest out.

lm-generate runs on it (lmpipe.tasks.generate), and so do chat models under translate and
summarize (lmpipe.backends.text); lmpipe.backends.remote gives the same records through a server.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from ..chat.answers import Plan, answer_fields, plan_for
from ..chat.prompts import PromptSettings, prompt_ids, template_manifest, with_template
from ..chat.reasoning import OPEN, opens_thinking
from ..engine.constrain import Constraint, model_ll_tokenizer, row_constraints
from ..engine.decoding import Decoding, settled
from ..engine.events import Completion, Token
from ..engine.generation import check_vision_decoding, generate
from ..engine.preparation import Preparation
from ..engine.sampling import Sampling
from ..engine.speculative import check_draft, load_draft, manifest_part
from ..errors import RecordError, UsageError
from ..models.loading import LoadedModel
from ..models.processors import image_token_count
from ..records.jsonl import Item, error_record
from ..records.manifest import manifest
from ..records.runner import Finished, Streamed
from .vision_prompts import ImageSource, vision_prompt


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
    images: ImageSource = field(default_factory=ImageSource)  # a vision-language model's images


def stats(c: Completion, ttnt: int | None, image_tokens: int | None = None) -> dict[str, Any]:
    """`image_tokens`: for a vision-language model, how many of the input tokens stand for images."""
    out = {
        "input_tokens": c.input_tokens,
        "output_tokens": c.output_tokens,
        "ttft_s": c.ttft_s,
        "tokens_per_s": c.tokens_per_s,
        "total_s": c.total_s,
        "finish_reason": c.finish_reason,
    }
    if image_tokens is not None:
        out["image_tokens"] = image_tokens
    if ttnt:
        out["ttnt"] = ttnt
        out["ttnt_s"] = round(c.token_seconds[ttnt - 1], 6) if len(c.token_seconds) >= ttnt else None
    return out


def token_record(t: Token) -> dict[str, Any]:
    return {"id": t.id, "token": t.text, "p": t.p, "top": [{"id": x.id, "token": x.token, "p": x.p} for x in t.top]}


def run_settings(settings: GenerateSettings) -> dict[str, Any]:
    """The settings part of the manifest: the same in-process and through a server."""
    out: dict[str, Any] = {
        "sampling": settings.sampling.manifest(), "raw": settings.prompt.raw, "system": settings.prompt.system,
    }
    if settings.prompt.prefix:
        out["prefix"] = settings.prompt.prefix
    out.update(template_manifest(settings.prompt))
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

    def __init__(self, lm: LoadedModel, settings: GenerateSettings, draft: LoadedModel | None = None):
        """`draft`: the draft model another task already loaded (checked again for this model and
        these settings); without it, the one `settings.decoding` names is loaded."""
        if settings.images.images and lm.processor is None:
            raise UsageError(f"--image needs a vision-language model; {lm.ref.name} reads text only")
        if lm.processor is not None and (draft is not None or settings.decoding.draft):
            raise UsageError("a vision-language model decodes without a draft model (drop --draft-model)")
        if lm.processor is not None:
            check_vision_decoding(settings.decoding)
        self.lm = lm
        self.preparation = Preparation.of(lm)
        template = lm.processor if lm.processor is not None else lm.tokenizer
        self.settings = replace(settings, sampling=self.preparation.sampling(settings.sampling),
                                prompt=with_template(settings.prompt, template),
                                decoding=settled(settings.decoding, lm.model))
        if draft is not None:
            check_draft(lm.model, draft.model, lm.tokenizer, draft.tokenizer, self.settings.sampling)
            self.draft: LoadedModel | None = draft
        else:
            self.draft = load_draft(settings.decoding, lm, self.settings.sampling)
        if self.draft is not None and self.settings.decoding.compile:  # the manifest names the step that runs
            print("lmpipe: --compile: speculative rows run the fast path's uncompiled step", file=sys.stderr)
            self.settings = replace(self.settings, decoding=replace(self.settings.decoding, compile=False))
        ran = {"cache": self.settings.decoding.cache, "compile": self.settings.decoding.compile}
        self.manifest = manifest(lm.identity, {**run_settings(self.settings), **ran,
                                               **manifest_part(settings.decoding, self.draft)}, lm.device, lm.dtype)
        if settings.constraint is not None:
            model_ll_tokenizer(lm.model, lm.tokenizer)  # built now, so a problem shows before any record is read

    def prepare(self, item: Item) -> tuple[list[int], Plan, Any]:
        """The record's prompt ids, its answer's plan, and (a vision-language model) its ImagePrompt."""
        record = item.record or {}
        plan = plan_for(record, self.settings.constraint, self.settings.tool_choice)
        image = None
        if self.lm.processor is not None:
            image = vision_prompt(record, self.lm.processor, self.settings.prompt, self.settings.images, plan.tools)
            ids = image.ids
        else:
            ids = prompt_ids(record, self.lm.tokenizer, self.settings.prompt, plan.tools)
        self.preparation.check(ids)
        return ids, plan, image

    def output(self, item: Item, c: Completion, plan: Plan, ids: list[int] | None = None) -> Finished:
        tokens = [token_record(t) for t in c.tokens] if self.settings.top_probs else None
        counted = image_token_count(self.lm.processor, ids) if ids is not None else None
        text = c.text
        if ids and not plan.tools and plan.constraint is None and opens_thinking(self.lm.tokenizer.decode(ids[-8:])):
            text = OPEN + text  # the template opened the think block: the reply starts as reasoning
        return answer_record(item, self.settings, plan, text, c.finish_reason,
                             stats(c, self.settings.ttnt, counted), self.manifest, tokens)

    def process(self, batch: list[Item]) -> Iterator[Finished | Streamed]:
        ready: list[tuple[Item, list[int]]] = []
        plans: list[Plan] = []
        images: list[Any] = []
        for item in batch:
            try:
                ids, plan, image = self.prepare(item)
                ready.append((item, ids))
                plans.append(plan)
                images.append(image)
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)
        if not ready:
            return
        events = generate(
            self.lm.model,
            self.lm.tokenizer,
            [ids for _, ids in ready],
            [self.preparation.row(ids, self.settings.sampling) for _, ids in ready],
            top_probs=self.settings.top_probs,
            device=self.lm.device,
            constraints=[row_constraints(self.lm.model, self.lm.tokenizer, p.grammar) for p in plans],
            decoding=self.settings.decoding,
            draft=self.draft.model if self.draft else None,
            inputs=images if self.lm.processor is not None else (),
            processor=self.lm.processor,
        )
        finished: set[int] = set()
        try:
            for event in events:
                item = ready[event.row][0]
                if isinstance(event, Token):
                    yield Streamed(item, event)
                elif isinstance(event, Completion):  # no echo asked: no ScoredPrompt comes
                    finished.add(event.row)
                    yield self.output(item, event, plans[event.row], ready[event.row][1])
        except (RuntimeError, ValueError, IndexError) as exc:
            # The batch as a whole failed (out of memory, a model bug): every unfinished record says so.
            for row, (item, _) in enumerate(ready):
                if row not in finished:
                    yield Finished(item, error_record(item, f"generation failed: {exc}"), failed=True)
