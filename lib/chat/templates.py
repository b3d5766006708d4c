"""Prompt templates (Jinja, strict) and agent files in TOML, in the manner of avalan.

A template sees the record's fields as variables (`{{ text }}`, `{{ title }}`); a variable the
record lacks is an error, never an empty string. An agent file:

    [agent]                 # role, task, instructions: templates; rules: a list of them; name
    role = "You are a translator."
    task = "Translate the user's text from {{ source_language }} to {{ destination_language }}."
    instructions = "Keep the formatting."
    rules = ["Reply with the translation only."]
    user = "{{ text }}"     # optional: the user turn (default: the record's --field)
    [template]              # default variables; the record's own fields win
    source_language = "English"
    [engine]                # the model it wants (uri or model_id)
    uri = "smollm2"
    [run]                   # generation settings it wants (max_new_tokens, temperature, ...)
    max_new_tokens = 256
"""

from __future__ import annotations

import textwrap
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecordError, UsageError

AGENT_KEYS = {"name", "role", "task", "instructions", "rules", "user"}


def environment():
    """Sandboxed, as transformers renders chat templates: an agent file is meant to be shared, and
    a template must not reach Python's internals (`cycler.__init__.__globals__.os`) to run code."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)


def compile_template(source: str, what: str = "template"):
    """A compiled template named `what` (for its errors); a syntax error is a one-line UsageError naming the line."""
    from jinja2 import TemplateSyntaxError

    try:
        template = environment().from_string(source)
    except TemplateSyntaxError as exc:
        raise UsageError(f"{what}: syntax error on line {exc.lineno}: {exc.message}") from None
    template.name = what
    return template


def render(template: Any, variables: dict[str, Any]) -> str:
    """Render; a missing variable, an unsafe access (or any error inside the template) is this record's error."""
    from jinja2 import TemplateError, UndefinedError
    from jinja2.exceptions import SecurityError

    try:
        return template.render(**variables)
    except UndefinedError as exc:
        raise RecordError(f"missing template variable: {exc.message}") from None
    except SecurityError as exc:
        raise RecordError(f"{template.name or 'template'}: unsafe template, refused: {exc.message or exc}") from None
    except TemplateError as exc:
        raise RecordError(f"template error: {exc.message or exc}") from None


def _tidy(text: str) -> str:
    return textwrap.dedent(text).strip()


@dataclass
class Agent:
    """An agent file, compiled: the system prompt's parts, the user turn, defaults and wishes."""

    path: str
    parts: list[Any]  # role, name line (plain text), task, instructions, rules (templates)
    user: Any | None
    variables: dict[str, Any] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)

    def system(self, variables: dict[str, Any]) -> str:
        rendered = (t if isinstance(t, str) else render(t, variables) for t in self.parts)
        return "\n\n".join(p for p in map(_tidy, rendered) if p)

    def model(self) -> str | None:
        return self.engine.get("uri") or self.engine.get("model_id") or self.engine.get("model")


def load_agent(path: str | Path) -> Agent:
    """Read and compile an agent TOML file; anything wrong is one UsageError line."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read agent file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"agent file {path} is not valid TOML: {exc}") from None
    agent = data.get("agent")
    if not isinstance(agent, dict):
        raise UsageError(f"agent file {path} has no [agent] table")
    for key in AGENT_KEYS - {"rules"}:
        if key in agent and not isinstance(agent[key], str):
            raise UsageError(f"agent file {path}: [agent] {key} must be a string")
    rules = agent.get("rules", [])
    if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
        raise UsageError(f"agent file {path}: [agent] rules must be a list of strings")
    for table in ("template", "engine", "run"):
        if not isinstance(data.get(table, {}), dict):
            raise UsageError(f"agent file {path}: [{table}] must be a table")

    def part(source: str, what: str):
        return compile_template(_tidy(source), f"{path} [agent] {what}")

    parts = [part(agent.get("role") or "You are a helpful assistant.", "role")]
    if agent.get("name"):
        parts.append(f"Your name is {agent['name']}.")
    for key in ("task", "instructions"):
        if agent.get(key):
            parts.append(part(agent[key], key))
    if rules:
        parts.append(part("Rules:\n" + "\n".join(f"- {_tidy(r)}" for r in rules), "rules"))
    user = part(agent["user"], "user") if agent.get("user") else None
    return Agent(str(path), parts, user, dict(data.get("template", {})), dict(data.get("engine", {})),
                 dict(data.get("run", {})))
