"""The pipeline's output: each record's answer, wrapped, or the raw JSON lines the last stage wrote."""

from __future__ import annotations

import orjson
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog


def readable(number: int, line: bytes, field: str | None) -> RenderableType:
    """One record as people read it: its number, then the answer field wrapped under itself.

    An error record shows its line and error in red; a record without the field (or a line
    that is not a JSON object) shows as it was written.
    """
    text = line.decode("utf-8", "replace").rstrip("\n")
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    if isinstance(record, dict) and record.get("error") is not None:
        shown = Text(f"line {record.get('line', '?')}: {record['error']}", style="red")
    elif isinstance(record, dict) and field and isinstance(record.get(field), str):
        shown = Text(record[field])
    elif isinstance(record, dict) and field and record.get(field) is not None:
        shown = Text(orjson.dumps(record[field]).decode())
    else:
        shown = Text(text, style="dim")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(str(number), shown)
    return grid


class OutputView(RichLog):
    """The lines out of the last stage, kept as they came; shown readable or raw, wrapped either way."""

    def __init__(self, **kwargs):
        super().__init__(wrap=True, markup=False, highlight=False, min_width=1, **kwargs)
        self.lines_out: list[bytes] = []
        self.field: str | None = None
        self.raw = False
        self._drawn_width = 0

    def on_mount(self) -> None:
        self._title()

    def reset(self, field: str | None) -> None:
        """Start a new run whose records' answers are in `field` (None: show the records whole)."""
        self.lines_out = []
        self.show_field(field)

    def show_field(self, field: str | None) -> None:
        """Show the answers from `field` (the last stage's `--out`, which changes with the pipeline)."""
        self.field = field
        self._title()
        self._redraw()

    def add(self, line: bytes) -> None:
        self.lines_out.append(line)
        self._write(len(self.lines_out), line)

    def toggle_raw(self) -> None:
        self.raw = not self.raw
        self._title()
        self._redraw()

    def _title(self) -> None:
        self.border_title = "Output: raw JSONL" if self.raw else f"Output: {self.field}" if self.field else "Output"

    def _write(self, number: int, line: bytes) -> None:
        if self.raw:
            self.write(Text(line.decode("utf-8", "replace").rstrip("\n")))
        else:
            self.write(readable(number, line, self.field))

    def _redraw(self) -> None:
        self.clear()
        for number, line in enumerate(self.lines_out, 1):
            self._write(number, line)

    def on_resize(self, event: Resize) -> None:
        # RichLog wraps a line once, when it is written: wrap them again at the new width.
        width = event.size.width
        if self._drawn_width and width != self._drawn_width and self.lines_out:
            self._drawn_width = width
            self._redraw()
        self._drawn_width = width
