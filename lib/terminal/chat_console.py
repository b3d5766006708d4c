"""lm-chat at a terminal: the prompt with line editing and history, the reply as it streams (its
reasoning dim, apart), a stats line after it. What is said, and what a command does, is decided
above (lmpipe.tasks.chat_session); this only reads lines and shows things."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .display import _console, stats_line

TIMED = ("input_tokens", "output_tokens", "ttft_s", "tokens_per_s", "total_s", "finish_reason")  # what stats_line shows


class ChatConsole:
    PROMPT, MORE = ">>> ", "... "  # Ollama's prompts: a message, and the lines of a \"\"\" block

    def __init__(self, history: Path | None = None, quiet: bool = False):
        self.out, self.err = _console(), _console(stderr=True)
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
        from rich.text import Text

        if self.thinking and not reasoning:
            self.out.print()
        self.thinking = reasoning
        self.out.print(Text(text, style="dim italic" if reasoning else ""), end="")
        self.out.file.flush()
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
                self.err.print(f"[dim]{stats_line(stats)}[/]")
        self.thinking = self.streamed = False

    def stopped(self) -> None:
        """Ctrl-C during a reply: back to a fresh line for the prompt."""
        self._end_line()
        self.thinking = self.streamed = False

    def _end_line(self) -> None:
        if self.streamed:
            self.out.print()

    def note(self, text: str) -> None:
        self.out.print(text, markup=False, highlight=False)

    def error(self, text: str) -> None:
        from rich.text import Text

        self.err.print(Text(text, style="red"))
