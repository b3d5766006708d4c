"""One stage's live meter: counts, rates, a sparkline, the current record and its tokens."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.widgets import Sparkline, Static

from ..live import StageSnapshot
from ..pipeline import Stage


def summary(s: StageSnapshot) -> Text:
    text = Text()
    text.append(f"in {s.records_in}  out {s.records_out}  ")
    text.append(f"err {s.errors}", style="bold red" if s.errors else "")
    text.append(f"  {s.records_per_s:.2f} rec/s")
    total = (s.progress or {}).get("total")
    if isinstance(total, int) and total:
        text.append(f"  {s.records_out}/{total}")
    if s.tokens:
        text.append(f"  {s.tokens_per_s:.1f} tok/s")
    if s.exit_code is not None:
        text.append(f"  exit {s.exit_code}", style="bold red" if s.exit_code else "green")
    elif s.running:
        text.append("  running", style="yellow")
    return text


class StageMeter(Vertical):
    """Shows a StageSnapshot; `show()` is the only way in."""

    def __init__(self, index: int, stage: Stage):
        super().__init__(classes="stage-meter")
        self.index = index
        self.snapshot = StageSnapshot(index, stage.tool)
        self.border_title = f"{index + 1} {stage.shell()}"

    def compose(self) -> ComposeResult:
        with Horizontal(classes="meter-top"):
            yield Static("idle", classes="meter-summary")
            yield Sparkline([], classes="meter-spark")
        yield Static("", classes="meter-current")
        yield Static("", classes="meter-stream")
        yield Static("", classes="meter-error")

    def on_mount(self) -> None:
        self.show(self.snapshot)

    def show(self, s: StageSnapshot) -> None:
        self.snapshot = s
        try:
            self._draw(s)
        except NoMatches:
            pass  # not composed yet: on_mount draws the latest snapshot

    def _draw(self, s: StageSnapshot) -> None:
        self.query_one(".meter-summary", Static).update(summary(s))
        self.query_one(".meter-spark", Sparkline).data = list(s.spark) if any(s.spark) else []
        self.query_one(".meter-current", Static).update(Text(f"» {s.current}" if s.current else ""))
        tail = s.streamed.replace("\n", " ")[-200:]
        self.query_one(".meter-stream", Static).update(Text(tail, style="italic"))
        failed = s.exit_code not in (None, 0)
        last = s.messages[-1] if s.messages else ""
        error = self.query_one(".meter-error", Static)
        error.update(Text(last, style="bold red" if failed or s.errors else "dim"))
        error.display = bool(last)
        self.set_class(failed, "failed")
