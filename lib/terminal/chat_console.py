"""lm-chat at a terminal: the prompt with line editing and history, the reply as it streams (its
reasoning dim, apart), a stats line after it. What is said, and what a command does, is decided
above (lmpipe.tasks.chat_session); this only reads lines and shows things."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO, Any

from rich.color import ColorSystem
from rich.style import Style

from .display import stats_line

TIMED = ("input_tokens", "output_tokens", "ttft_s", "tokens_per_s", "total_s", "finish_reason")  # what stats_line shows


class ChatConsole:
    PROMPT, MORE = ">>> ", "... "  # Ollama's prompts: a message, and the lines of a \"\"\" block

    def __init__(self, history: Path | None = None, quiet: bool = False, out: IO[str] | None = None,
                 err: IO[str] | None = None, color: bool | None = None):
        """`color`: style the text (None: as rich finds the terminal, NO_COLOR and TERM=dumb included)."""
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.out_color = _colors(self.out, color)
        self.err_color = _colors(self.err, color)
        self.quiet = quiet
        self.history = history
        self.readline: Any = None
        self.thinking = False  # the last piece shown was reasoning
        self.streamed = False  # some of this reply is on the screen
        self._open_history()

    def _open_history(self) -> None:
        try:
            import readline  # input() edits lines through it once it is imported
        except ImportError:  # a Python built without it: lines are read plainly
            return
        self.readline = readline
        if self.history is not None:
            try:
                readline.read_history_file(self.history)
            except OSError:
                pass  # no history yet
            readline.set_history_length(1000)

    def read(self, more: bool = False) -> str:
        """One line typed at the prompt. EOFError on Ctrl-D, KeyboardInterrupt on Ctrl-C."""
        line = input(self.MORE if more else self.PROMPT)
        if self.readline is not None and self.history is not None and line.strip():
            try:  # each line as it is typed, so a killed session keeps its history too
                self.history.parent.mkdir(parents=True, exist_ok=True)
                if not self.history.exists():
                    self.history.touch()
                self.readline.append_history_file(1, self.history)
            except OSError:
                pass  # a read-only home: history stays in memory
        return line

    def piece(self, text: str, reasoning: bool) -> None:
        """Part of the reply as it streams; reasoning dim and italic, the answer on its own line after it."""
        if self.thinking and not reasoning:
            self._write(self.out, "\n")
        self.thinking = reasoning
        self._write(self.out, _styled(text, THINKING, self.out_color) if reasoning else text)
        self.streamed = True

    def finished(self, record: dict[str, Any], failed: bool, field: str = "generated") -> None:
        """The reply is done: a reply that did not stream (a server's) is shown whole, then the stats line."""
        if failed:
            self._end_line()
            self.error(str(record.get("error")))
        else:
            if not self.streamed:
                if record.get("reasoning"):
                    self.piece(record["reasoning"], True)
                self.piece(record.get(field) or "", False)
            self._end_line()
            stats = record.get("stats") or {}
            # Another OpenAI-compatible server may leave times out: no line rather than a wrong one.
            if not self.quiet and all(stats.get(k) is not None for k in TIMED):
                self._write(self.err, _styled(stats_line(stats), Style(dim=True), self.err_color) + "\n")
        self.thinking = self.streamed = False

    def stopped(self) -> None:
        """Ctrl-C during a reply: back to a fresh line for the prompt."""
        self._end_line()
        self.thinking = self.streamed = False

    def _end_line(self) -> None:
        if self.streamed:
            self._write(self.out, "\n")

    def note(self, text: str) -> None:
        self._write(self.out, text + "\n")

    def error(self, text: str) -> None:
        self._write(self.err, _styled(text, Style(color="red"), self.err_color) + "\n")

    @staticmethod
    def _write(file: IO[str], text: str) -> None:
        # Plain writes, not rich's print: a Ctrl-C inside rich's flush leaves the text in its
        # buffer, and the next print shows it again after the prompt.
        file.write(text)
        file.flush()


THINKING = Style(dim=True, italic=True)


def _colors(file: IO[str], color: bool | None) -> bool:
    if color is not None:
        return color
    from rich.console import Console

    return Console(file=file).color_system is not None


def _styled(text: str, style: Style, color: bool) -> str:
    return style.render(text, color_system=ColorSystem.STANDARD) if color else text
