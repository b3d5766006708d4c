"""A form built from a tool's own click options: one row per option."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Checkbox, Input, Label, Select

from lmpipe.cli.commands import OptionSpec, ToolSpec


def field_id(option: OptionSpec) -> str:
    return f"opt-{option.name}"


class OptionForm(VerticalScroll):
    """Holds the values of a ToolSpec's options; `values()` reads them back."""

    def __init__(self, tool: ToolSpec, values: dict[str, Any]):
        super().__init__(classes="option-form")
        self.tool, self.initial = tool, values

    def compose(self) -> ComposeResult:
        for o in self.tool.options:
            value = self.initial.get(o.name)
            with Horizontal(classes="option-row"):
                yield Label(o.flag or o.name.upper(), classes="option-flag")
                if o.kind == "flag":
                    yield Checkbox(o.help or o.flag, bool(value), id=field_id(o), compact=True)
                elif o.kind == "choice":
                    options = [(c, c) for c in o.choices]
                    chosen = value if value in o.choices else Select.NULL
                    yield Select(options, value=chosen, allow_blank=o.default is None, id=field_id(o),
                                 compact=True)
                else:
                    hint = "space-separated, shell quoting" if o.kind == "multiple" else (o.help or "")
                    yield Input(str(value or ""), placeholder=hint, id=field_id(o), compact=True,
                                tooltip=o.help or None)

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for o in self.tool.options:
            widget = self.query_one(f"#{field_id(o)}")
            if isinstance(widget, Checkbox):
                out[o.name] = widget.value
            elif isinstance(widget, Select):
                out[o.name] = None if widget.value is Select.NULL else widget.value
            elif isinstance(widget, Input):
                out[o.name] = widget.value
        return out
