"""A record's `agent` (what `lm-template --agent` copies from an agent file): merged into the
generation settings, the one place that decides which of an agent's wishes apply (`apply_agent`),
and lm-generate's records grouped by the model and settings they ask for (`AgentTasks`).

The field is `{"file": ..., "model": ..., "run": {...}}`: `model` is the agent's [engine] model,
`run` its [run] table. Every [run] key is either a setting lmpipe has, applied unless the command
line gave that option, or one of avalan's switches for what lmpipe always does (accepted when
true); any other key, or a value of the wrong type, is this record's error, never dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ..chat.prompts import PromptSettings
from ..engine.sampling import Sampling
from ..errors import LmpipeError, RecordError, UsageError
from ..models.loading import load
from ..models.resolve import resolve
from ..records.jsonl import Item, error_record
from ..records.runner import Finished, Streamed
from .generate import GenerateSettings, GenerateTask
from .remote import RemoteGenerateTask

# [run] keys lmpipe applies: the sampling settings, named as lm-generate's options are.
RUN_KEYS: dict[str, type] = {
    "max_new_tokens": int, "temperature": float, "top_p": float, "top_k": int, "min_p": float,
    "repetition_penalty": float, "seed": int, "stop": tuple, "reasoning_budget": int,
    "think": bool,  # the chat template's enable_thinking, as --think/--no-think
}
PROMPT_KEYS = {"think"}  # [run] keys of the prompt's settings; the others are sampling's
# avalan's switches for what lmpipe always does: true is accepted (and recorded), false is an error.
ALWAYS = {
    "use_cache": "lmpipe always decodes with a KV cache",
    "skip_special_tokens": "lmpipe always leaves special tokens out of the text",
}


@dataclass(frozen=True)
class AgentSettings:
    """What a record's agent changes: the settings to generate with, the model it asks for (None:
    the running one), and the manifest's `agent` part saying what applied and what the command
    line kept."""

    settings: GenerateSettings
    model: str | None
    manifest: dict[str, Any]


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _checked(key: str, value: Any) -> Any:
    kind = RUN_KEYS[key]
    if kind is tuple:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise RecordError(f"agent [run] {key} = {_shown(value)}: expected a string or a list of strings")
    if kind is bool:
        if not isinstance(value, bool):
            raise RecordError(f"agent [run] {key} = {_shown(value)}: expected true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        expected = "an integer" if kind is int else "a number"
        raise RecordError(f"agent [run] {key} = {_shown(value)}: expected {expected}")
    return kind(value)


def apply_agent(settings: GenerateSettings, agent: Any, given: frozenset[str]) -> AgentSettings:
    """`settings` with the record's agent applied; `given` names the options the command line set,
    which win over the agent's. Raises RecordError for anything the agent asks that lmpipe cannot do."""
    if not isinstance(agent, dict):
        raise RecordError("agent must be an object {\"file\", \"model\", \"run\"} (as lm-template --agent writes it)")
    run = agent.get("run") or {}
    if not isinstance(run, dict):
        raise RecordError("agent.run must be an object (the agent file's [run] table)")
    applied: dict[str, Any] = {}
    overridden: list[str] = []
    model = agent.get("model")
    if model is not None:
        if not isinstance(model, str) or not model.strip():
            raise RecordError(f"agent.model = {_shown(model)}: expected a model name")
        if "model" in given:
            overridden.append("model")
            model = None
        else:
            applied["model"] = model
    changes: dict[str, Any] = {}
    for key, value in run.items():
        if key in ALWAYS:
            if value is not True:
                raise RecordError(f"agent [run] {key} = {_shown(value)}: not supported ({ALWAYS[key]})")
            applied[key] = True
            continue
        if key not in RUN_KEYS:
            known = ", ".join([*RUN_KEYS, *ALWAYS])
            raise RecordError(f"agent [run] {key}: not a setting lmpipe knows ({known})")
        checked = _checked(key, value)
        if key in given:
            overridden.append(key)
            continue
        changes[key] = checked
        applied[key] = list(checked) if isinstance(checked, tuple) else checked
    prompt_changes = {k: changes.pop(k) for k in PROMPT_KEYS & set(changes)}
    try:
        sampling = replace(settings.sampling, **changes)
    except LmpipeError as exc:  # the settings' own checks, in terms of the options
        raise RecordError(f"agent [run]: {exc}") from None
    part = {"file": agent.get("file"), "applied": applied, "overridden": overridden}
    return AgentSettings(replace(settings, sampling=sampling, prompt=replace(settings.prompt, **prompt_changes)),
                         model, part)


# The model a record asks for (None: the running one), its sampling and its prompt's settings.
Key = tuple[str | None, Sampling, PromptSettings]


class AgentTasks:
    """lm-generate's records, each generated with the model and settings its `agent` field asks for
    (`apply_agent` decides which apply); records without one use the command line's.

    A batch is split into groups that ask for the same model and sampling, each generated together
    by its own task, made by `variant(model, settings)` the first time it is asked for (loading a
    model the first time a record names it; it stays loaded for the run). A model or setting that
    cannot be had makes error records of the records that asked for it; the runner keeps the order.
    """

    def __init__(self, base: Any, variant: Callable[[str | None, GenerateSettings], Any], given: frozenset[str]):
        self.base, self.variant, self.given = base, variant, given
        self.tasks: dict[Key, Any] = {(None, base.settings.sampling, base.settings.prompt): base}
        self.failures: dict[Key, RecordError] = {}

    def _task(self, key: Key) -> Any:
        if key in self.failures:
            raise self.failures[key]
        if key not in self.tasks:
            model, sampling, prompt = key
            try:
                self.tasks[key] = self.variant(model, replace(self.base.settings, sampling=sampling, prompt=prompt))
            except (LmpipeError, OSError, RuntimeError, ValueError) as exc:  # a model that will not load
                self.failures[key] = RecordError(f"agent model {model}: {exc}" if model else f"agent: {exc}")
                raise self.failures[key] from None
        return self.tasks[key]

    def process(self, batch: list[Item]) -> Iterator[Finished | Streamed]:
        groups: dict[Key, list[Item]] = {}
        parts: dict[int, dict[str, Any]] = {}  # by line: the manifest's `agent` part
        for item in batch:
            agent = (item.record or {}).get("agent")
            if agent is None:
                groups.setdefault((None, self.base.settings.sampling, self.base.settings.prompt), []).append(item)
                continue
            try:
                wish = apply_agent(self.base.settings, agent, self.given)
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)
                continue
            groups.setdefault((wish.model, wish.settings.sampling, wish.settings.prompt), []).append(item)
            parts[item.line] = wish.manifest
        for key, items in groups.items():
            try:
                task = self._task(key)
            except (RecordError, UsageError) as exc:  # an agent's settings are its records' data
                for item in items:
                    yield Finished(item, error_record(item, str(exc)), failed=True)
                continue
            for out in task.process(items):
                part = parts.get(out.item.line)
                if part is not None and isinstance(out, Finished) and "manifest" in out.record:
                    out = Finished(out.item, {**out.record, "manifest": {**out.record["manifest"], "agent": part}},
                                   out.failed)
                yield out


def in_process(base: GenerateTask, model_settings: Any) -> Callable[[str | None, GenerateSettings], GenerateTask]:
    """Tasks on the running model (and draft) or on a model a record names, loaded once, kept."""
    def same(ref: Any) -> tuple[str, str, str | None]:
        return ref.id, ref.kind, ref.revision

    loaded = {same(base.lm.ref): base.lm}

    def variant(model: str | None, settings: GenerateSettings) -> GenerateTask:
        lm = base.lm
        if model is not None:
            ref = same(resolve(model))
            if ref not in loaded:
                loaded[ref] = load(replace(model_settings, model=model))
            lm = loaded[ref]
        return GenerateTask(lm, settings, draft=base.draft)

    return variant


def through_server(base: Any) -> Callable[[str | None, GenerateSettings], Any]:
    """Tasks on the server: a model a record names is sent by that name."""
    def variant(model: str | None, settings: GenerateSettings) -> Any:
        return RemoteGenerateTask(base.client, model or base.model, settings, by_name=True)

    return variant
