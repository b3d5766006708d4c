"""How full a chat's context is: "ctx 312/8192" and a bar, redrawn at the width it is given."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from ..pool import ContextFill

FULL, EMPTY = "█", "░"


def bar_style(used: int, size: int) -> str:
    share = used / size
    return "red" if share >= 0.9 else "yellow" if share >= 0.75 else "green"


def gauge_text(fill: ContextFill, width: int) -> Text:
    """The label, then a bar in what is left of `width` (none when too narrow)."""
    label = f"ctx {fill.used}/{fill.size}" if fill.size else f"ctx {fill.used}"
    text = Text(label)
    room = width - len(label) - 1
    if fill.size and room >= 4:
        full = min(room, round(room * fill.used / fill.size))
        text.append(" ")
        text.append(FULL * full, style=bar_style(fill.used, fill.size))
        text.append(EMPTY * (room - full), style="dim")
    return text


class ContextGauge(Widget):
    """`show()` is the only way in; `fill` is what it shows."""

    DEFAULT_CSS = "ContextGauge { height: 1; }"

    def __init__(self, id: str | None = None):
        super().__init__(id=id)
        self.fill = ContextFill(0, None)

    def show(self, fill: ContextFill) -> None:
        self.fill = fill
        self.refresh()

    def render(self) -> Text:
        return gauge_text(self.fill, self.content_size.width)
