"""Roff man pages for every lm-* tool, rendered from the tools' own click definitions.

Each console script named lm-* in the installed package metadata is loaded; its page is made of
the module docstring (NAME), the usage line (SYNOPSIS), the command's help before the `\\b` line
(DESCRIPTION), every option with its help, default and environment variable (OPTIONS), the
module's FIELDS_READ / FIELDS_WRITTEN (FIELDS), lmpipe.records.pipe's exit codes (EXIT STATUS), the help
after `\\b` (EXAMPLES) and the other tools (SEE ALSO). `make man` writes them to man/.

The docs site's reference sections (synopsis, options, fields, exit status) are rendered here too,
in Markdown (`reference`), from the same definitions: docs/_hooks/reference.py puts one where a
page says `<!-- reference: lm-NAME -->`, so no option table is written by hand.

    python -m lmpipe.cli.manpages man      # write man/<tool>.1 for every tool
"""

from __future__ import annotations

import importlib
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from ..records.pipe import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ..version import __version__

EXIT_CODES = (
    (EXIT_OK, "Every record succeeded."),
    (EXIT_FAILED, "Some record failed (it became an error record), or a runtime error stopped the tool."),
    (EXIT_USAGE, "Usage error: a bad option or argument, an unknown model."),
    (EXIT_INTERRUPTED, "Interrupted (Ctrl-C); records not finished became \"interrupted\" error records."),
)


def tools() -> dict[str, Any]:
    """The lm-* console scripts of the installed lmpipe, by name: {name: entry point}."""
    found = {}
    for ep in entry_points(group="console_scripts"):
        if ep.name.startswith("lm-") and ep.value.startswith("lmpipe."):
            found[ep.name] = ep
    return dict(sorted(found.items()))


def escape(text: str) -> str:
    """Text safe in roff: backslashes, hyphens (so `--model` is searchable and copyable), line starts."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def inline(text: str) -> str:
    """Escape, then `code` spans in bold."""
    return re.sub(r"`([^`]+)`", r"\\fB\1\\fR", escape(text))


def split_help(help_text: str) -> tuple[str, list[str]]:
    """The description, and the example lines that follow a `\\b` line."""
    lines = (help_text or "").splitlines()
    if "\b" in [line.strip() for line in lines]:
        at = [line.strip() for line in lines].index("\b")
        examples = [line for line in lines[at + 1:]]
        while examples and not examples[-1].strip():
            examples.pop()
        indent = min((len(x) - len(x.lstrip()) for x in examples if x.strip()), default=0)
        return "\n".join(lines[:at]).strip(), [x[indent:] for x in examples]
    return (help_text or "").strip(), []


def summary(name: str, module: ModuleType, command: click.Command) -> str:
    doc = (module.__doc__ or "").strip().splitlines()
    first = doc[0] if doc else ""
    if first.startswith(f"{name}:"):
        return first.split(":", 1)[1].strip().rstrip(".")
    return (command.get_short_help_str(200) or name).rstrip(".")


def _fields(title: str, fields: dict[str, str] | None) -> list[str]:
    if fields is None:
        return []
    out = [f".SS {title}"]
    if not fields:
        return out + ["None."]
    for name, description in fields.items():
        out += [".TP", f"\\fB{escape(name)}\\fR", inline(description)]
    return out


def options(command: click.Command, ctx: click.Context) -> list[tuple[str, str]]:
    """Every option --help shows: its flags, and its help with its environment variable."""
    rows = []
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param.hidden:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        flags, help_text = record
        env = param.envvar if isinstance(param.envvar, str) else None
        if env and "env var:" not in help_text:
            help_text = f"{help_text} [env: {env}]".strip()
        rows.append((flags, help_text or ""))
    return rows


def render(name: str, command: click.Command, module: ModuleType, others: list[str]) -> str:
    ctx = click.Context(command, info_name=name, **command.context_settings)
    description, examples = split_help(command.help or "")
    out = [
        f'.TH {escape(name.upper())} 1 "" "lmpipe {__version__}" "lmpipe manual"',
        ".SH NAME",
        f"{escape(name)} \\- {inline(summary(name, module, command))}",
        ".SH SYNOPSIS",
        f".B {escape(name)}",
        escape(" ".join(command.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
    ]
    for i, paragraph in enumerate(p for p in re.split(r"\n\s*\n", description) if p.strip()):
        out += ([".PP"] if i else []) + [inline(" ".join(paragraph.split()))]
    out.append(".SH OPTIONS")
    for flags, help_text in options(command, ctx):
        out += [".TP", f"\\fB{escape(flags)}\\fR", inline(help_text)]
    read, written = getattr(module, "FIELDS_READ", None), getattr(module, "FIELDS_WRITTEN", None)
    if read is not None or written is not None:
        out += [".SH FIELDS", "Records are JSON objects, one a line. \\fBRead\\fR: the fields taken from "
                "input records; \\fBWritten\\fR: the fields of the records written. A record that fails "
                "carries \\fBerror\\fR and \\fBline\\fR."]
        out += _fields("Read", read) + _fields("Written", written)
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_CODES:
        out += [".TP", f"\\fB{code}\\fR", escape(meaning)]
    out.append(".SH ENVIRONMENT")
    out += [".TP", "\\fBLMPIPE_HOME\\fR", "lmpipe's folder (converted models); default ~/.cache/lmpipe.",
            ".TP", "\\fBLMPIPE_DEBUG\\fR", "Set to 1 for a traceback instead of a one\\-line error.",
            ".TP", "\\fBHF_HOME\\fR, \\fBHF_HUB_CACHE\\fR, \\fBHF_HUB_OFFLINE\\fR, \\fBHF_TOKEN\\fR",
            "The Hugging Face cache, offline mode and token, as huggingface_hub reads them."]
    if examples:
        out += [".SH EXAMPLES", ".nf", ".RS"] + [escape(line) for line in examples] + [".RE", ".fi"]
    if others:
        out.append(".SH SEE ALSO")
        out.append(",\n".join(f".BR {escape(o)} (1)" for o in others))
    return "\n".join(out) + "\n"


def cell(text: str) -> str:
    """Text safe in a Markdown table cell: `code` spans kept as they are, and outside them the
    characters Markdown would read as a cell's end, HTML, emphasis or a link escaped."""
    parts = re.split(r"(`[^`]+`)", " ".join(text.split()))
    return "".join(part if part.startswith("`") else
                   part.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
                   .replace("*", "\\*").replace("[", "\\[").replace("]", "\\]")
                   for part in parts)


def _field_table(title: str, fields: dict[str, str] | None) -> list[str]:
    if fields is None:
        return []
    if not fields:
        return [f"**{title}**: none.", ""]
    rows = [f"| `{name}` | {cell(description)} |" for name, description in fields.items()]
    return [f"**{title}**", "", "| field | meaning |", "|---|---|", *rows, ""]


def reference(name: str, command: click.Command, module: ModuleType) -> str:
    """The man page's synopsis, options, fields and exit status, as Markdown for the docs site."""
    ctx = click.Context(command, info_name=name, **command.context_settings)
    out = ["### Synopsis", "", "```text", f"{name} {' '.join(command.collect_usage_pieces(ctx))}", "```", "",
           f"`man {name}` shows the same reference, with examples.", "", "### Options", "",
           "| option | meaning |", "|---|---|"]
    out += [f"| `{flags}` | {cell(help_text)} |" for flags, help_text in options(command, ctx)]
    read, written = getattr(module, "FIELDS_READ", None), getattr(module, "FIELDS_WRITTEN", None)
    if read is not None or written is not None:
        out += ["", "### Fields", "", "A record that fails carries `error` and `line`.", ""]
        out += _field_table("Read", read) + _field_table("Written", written)
    out += ["", "### Exit status", "", "| code | meaning |", "|---|---|"]
    out += [f"| {code} | {cell(meaning)} |" for code, meaning in EXIT_CODES]
    return "\n".join(out) + "\n"


def loaded(entry_point: Any) -> tuple[click.Command, ModuleType]:
    """A tool's click command and the module that defines it (its docstring and FIELDS_*)."""
    return entry_point.load(), importlib.import_module(entry_point.module)


def tool_reference(name: str) -> str:
    """`reference` for the installed tool NAME."""
    return reference(name, *loaded(tools()[name]))


def page(name: str, entry_point: Any, all_names: list[str]) -> str:
    return render(name, *loaded(entry_point), [n for n in all_names if n != name])


def write_all(folder: Path) -> list[Path]:
    """Write folder/<tool>.1 for every tool, and remove pages of tools that no longer exist."""
    folder.mkdir(parents=True, exist_ok=True)
    found = tools()
    written = []
    for name, ep in found.items():
        path = folder / f"{name}.1"
        path.write_text(page(name, ep, list(found)))
        written.append(path)
    for stale in folder.glob("lm-*.1"):
        if stale.stem not in found:
            stale.unlink()
    return written


if __name__ == "__main__":
    for p in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "man")):
        print(p)
