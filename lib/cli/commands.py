"""The lm-* tools as their click commands describe them: found through their console_scripts
entry points, their options read from their own click definitions (no hand-kept list). The
dashboard (lmpipe.tui) builds its forms and pipelines on these.

Nothing here imports textual or torch: loading a tool's click command imports only its thin
bin/ module.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from functools import cache, lru_cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import click

PREFIX = "lm-"
SELF = "lm-dash"


@dataclass(frozen=True)
class OptionSpec:
    """One click parameter of a tool, as a form field."""

    name: str  # the python name click gives it
    flag: str  # the option string the form writes (--temperature); "" for an argument
    kind: str  # "flag", "choice", "text", "multiple" or "argument"
    default: Any
    help: str = ""
    choices: tuple[str, ...] = ()
    off_flag: str = ""  # --no-x of an on/off flag

    def default_text(self) -> str:
        if self.kind == "flag":
            return ""
        if self.default is None or self.kind == "multiple":
            return ""
        return str(self.default)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    summary: str
    options: tuple[OptionSpec, ...]

    def option(self, name: str) -> OptionSpec:
        return next(o for o in self.options if o.name == name)


def ours(ep: Any) -> bool:
    return str(ep.value).split(":")[0].split(".")[0] == "lmpipe"


@lru_cache(maxsize=1)
def tool_names() -> tuple[str, ...]:
    """Every installed lm-* console script of lmpipe's except the dashboard itself, sorted (others
    share the prefix: lm-evaluation-harness installs `lm-eval`)."""
    names = {ep.name for ep in entry_points(group="console_scripts") if ep.name.startswith(PREFIX) and ours(ep)}
    names.discard(SELF)
    return tuple(sorted(names))


@cache
def command(tool: str) -> click.Command:
    for ep in entry_points(group="console_scripts", name=tool):
        if not ours(ep):
            continue
        obj = ep.load()
        if isinstance(obj, click.Command):
            return obj
    raise LookupError(f"{tool} is not an installed lmpipe tool")


def _given(value: Any) -> Any:
    """None for click's "not given" markers (click 8.3 uses a sentinel object, older ones None)."""
    return None if value is None or type(value).__name__ == "Sentinel" else value


def _option_spec(param: click.Parameter) -> OptionSpec | None:
    if isinstance(param, click.Argument):
        return OptionSpec(param.name or "", "", "argument", None, "")
    if not isinstance(param, click.Option) or param.hidden:
        return None
    default = _given(param.default)
    longs = [o for o in param.opts if o.startswith("--")] or list(param.opts)
    flag, help_text = longs[0], (param.help or "").strip()
    if param.is_flag and not param.count:
        off = param.secondary_opts[0] if param.secondary_opts else ""
        return OptionSpec(param.name or "", flag, "flag", bool(default), help_text, off_flag=off)
    if param.multiple:
        return OptionSpec(param.name or "", flag, "multiple", (), help_text)
    if isinstance(param.type, click.Choice):
        choices = tuple(str(c) for c in param.type.choices)
        return OptionSpec(param.name or "", flag, "choice", default, help_text, choices)
    return OptionSpec(param.name or "", flag, "text", default, help_text)


@cache
def spec(tool: str) -> ToolSpec:
    cmd = command(tool)
    options = tuple(o for p in cmd.params if (o := _option_spec(p)) is not None)
    summary = (cmd.help or "").strip().splitlines()[0] if cmd.help else ""
    return ToolSpec(tool, summary, options)


def args_from_values(tool: ToolSpec, values: dict[str, Any]) -> list[str]:
    """Command-line arguments for the form's values; options left at their default are omitted.

    Values are what the form holds: bool for flags, text for the rest (a multiple option's text
    is split like a shell would, so `--stop` can be given several values).
    """
    args: list[str] = []
    positional: list[str] = []
    for o in tool.options:
        value = values.get(o.name)
        if o.kind == "flag":
            if value is None or bool(value) == bool(o.default):
                continue
            if value:
                args.append(o.flag)
            elif o.off_flag:
                args.append(o.off_flag)
        elif o.kind == "multiple":
            for part in shlex.split(value or ""):
                args += [o.flag, part]
        elif o.kind == "argument":
            if value:
                positional.append(str(value))
        else:
            text = "" if value is None else str(value)
            if text != "" and text != o.default_text():
                args += [o.flag, text]
    return args + positional


def values_from_args(tool: ToolSpec, args: list[str]) -> dict[str, Any]:
    """The form's values for a stage's arguments: click's own parser, no type conversion.

    Raw text is kept so that a bad value shows in the form as typed (and the tool reports it).
    """
    cmd = command(tool.name)
    # The command's own context settings: click caches the help option the first context asks for.
    ctx = click.Context(cmd, info_name=tool.name, resilient_parsing=True, **cmd.context_settings)
    parser = cmd.make_parser(ctx)
    opts, rest, _order = parser.parse_args(list(args))
    values: dict[str, Any] = {}
    for o in tool.options:
        if o.kind == "argument":
            raw = _given(opts.get(o.name))
            values[o.name] = " ".join(raw) if isinstance(raw, (list, tuple)) else (raw or "")
            continue
        if o.name not in opts:
            values[o.name] = bool(o.default) if o.kind == "flag" else ("" if o.kind == "multiple" else o.default_text())
            continue
        raw = _given(opts[o.name])
        if raw is None:
            values[o.name] = bool(o.default) if o.kind == "flag" else ("" if o.kind == "multiple" else o.default_text())
            continue
        if o.kind == "flag":
            values[o.name] = bool(raw) if not isinstance(raw, str) else raw.lower() in ("1", "true")
        elif o.kind == "multiple":
            values[o.name] = shlex.join(str(v) for v in raw)
        else:
            values[o.name] = str(raw)
    return values


def executable(tool: str) -> str:
    """The tool's executable: on PATH, else beside this Python (a venv not activated)."""
    here = str(Path(sys.executable).parent)
    found = shutil.which(tool, path=os.pathsep.join([os.environ.get("PATH", ""), here]))
    return found or tool


def installed(tool: str) -> bool:
    return executable(tool) != tool or shutil.which(tool) is not None
