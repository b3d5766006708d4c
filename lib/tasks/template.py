"""lm-template's task: each record rendered into a prompt (`text`) or a chat (`messages`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..chat.prompts import text_of
from ..chat.templates import Agent, compile_template, load_agent, render
from ..errors import RecordError, UsageError
from ..records.jsonl import Item, error_record
from ..records.pipe import JsonlSink, PipeSettings, run_records
from ..records.runner import Finished


@dataclass(frozen=True)
class TemplateSettings:
    template: str | None = None  # the prompt (or, with a system prompt or an agent, the user turn)
    system: str | None = None  # a system prompt template: output `messages`
    agent: str | None = None  # an agent TOML file: output `messages`
    field: str = "text"  # the user turn of an agent without `user` or TEMPLATE
    out: str = "text"  # where a plain prompt goes
    variables: tuple[tuple[str, str], ...] = ()  # --var NAME=VALUE

    def __post_init__(self) -> None:
        if self.template is None and self.agent is None:
            raise UsageError("give a TEMPLATE (or --file), or --agent FILE")


class TemplateTask:
    def __init__(self, settings: TemplateSettings):
        self.settings = settings
        self.agent: Agent | None = load_agent(settings.agent) if settings.agent else None
        self.template = compile_template(settings.template) if settings.template is not None else None
        if self.template is None and self.agent is not None:
            self.template = self.agent.user
        self.system = compile_template(settings.system, "--system") if settings.system else None
        self.defaults = {**(self.agent.variables if self.agent else {}), **dict(settings.variables)}

    def render(self, record: dict[str, Any]) -> dict[str, Any]:
        variables = {**self.defaults, **record}
        out = dict(record)
        if self.agent is None and self.system is None:
            out[self.settings.out] = render(self.template, variables)
            return out
        user = render(self.template, variables) if self.template is not None else text_of(record, self.settings.field)
        system = self.agent.system(variables) if self.agent else render(self.system, variables)
        out["messages"] = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if self.agent and (self.agent.engine or self.agent.run):
            out["agent"] = {"file": self.agent.path, "model": self.agent.model(), "run": self.agent.run}
        return out

    def process(self, batch: list[Item]) -> Iterator[Finished]:
        for item in batch:
            try:
                yield Finished(item, self.render(item.record or {}))
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)


@dataclass(frozen=True)
class TemplateRun:
    """One lm-template run: the template, and the records it renders."""

    settings: TemplateSettings
    pipe: PipeSettings = field(default_factory=PipeSettings)


def run(r: TemplateRun) -> int:
    task = TemplateTask(r.settings)
    job = r.pipe.job.open()
    return run_records("lm-template", task.process, JsonlSink(), batch_size=r.pipe.batch_size or 64,
                       progress=r.pipe.progress, job=job)
