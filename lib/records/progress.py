"""Progress for long batch work: a bar for people, JSON events for programs, both on stderr.

JSON events, one object per line (the format lm-dash and any script read):
  {"event": "started",  "tool": "lm-generate", "total": 120}          total: null when unknown
  {"event": "progress", "tool": ..., "done": 7, "failed": 1, "rate": 3.2, "eta_s": 35.3}
  {"event": "finished", "tool": ..., "done": 120, "failed": 2, "seconds": 41.0}
`done` counts every record written (failed ones too); `rate` is records per second.
With --resume, "started" also has "skipped": the records the output file already held, and `total`
counts only the records left to do (with --shard, those of the shard).
"""

from __future__ import annotations

import os
import stat
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from rich.console import Console

MODES = ("auto", "bar", "json", "none")


def count_remaining_lines(stream: IO[bytes]) -> int | None:
    """Lines left in stdin when it is a regular file (cheap: pread, the offset stays), else None."""
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        offset, lines, last = stream.tell(), 0, b"\n"  # tell(): a buffered reader may have read ahead
        while chunk := os.pread(fd, 1 << 20, offset):
            lines += chunk.count(b"\n")
            offset += len(chunk)
            last = chunk[-1:]
        return lines + (last != b"\n")
    except (OSError, ValueError, AttributeError):
        return None


def choose_mode(mode: str, stdout_tty: bool, stderr_tty: bool) -> str:
    if mode != "auto":
        return mode
    # A bar only where a person watches stderr and stdout is not showing streamed text.
    return "bar" if stderr_tty and not stdout_tty else "none"


class Progress:
    """Counts records as they are written and reports them in the chosen mode."""

    def __init__(self, tool: str, mode: str, total: int | None = None, stream: IO[str] | None = None,
                 skipped: int | None = None):
        self.tool, self.mode, self.total = tool, mode, total
        self.stream = stream or sys.stderr
        self.done = self.failed = 0
        self.started = time.perf_counter()
        self._bar: Any = None
        if mode == "json":
            started: dict[str, Any] = {"event": "started", "tool": tool, "total": total}
            if skipped is not None:
                started["skipped"] = skipped
            self._emit(started)
        elif mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn(tool), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                            TimeRemainingColumn(), transient=True, console=_console(self.stream))
            self._task = self._bar.add_task(tool, total=total, rate="")
            self._bar.start()

    def _emit(self, event: dict[str, Any]) -> None:
        self.stream.write(orjson.dumps(event).decode() + "\n")
        self.stream.flush()

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def record(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        rate = self.rate()
        eta = (self.total - self.done) / rate if self.total is not None and rate > 0 else None
        if self.mode == "json":
            self._emit({"event": "progress", "tool": self.tool, "done": self.done, "failed": self.failed,
                        "rate": round(rate, 3), "eta_s": None if eta is None else round(eta, 1)})
        elif self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{rate:.1f} rec/s")

    def close(self) -> None:
        if self.mode == "json":
            self._emit({"event": "finished", "tool": self.tool, "done": self.done, "failed": self.failed,
                        "seconds": round(time.perf_counter() - self.started, 3)})
        elif self._bar is not None:
            self._bar.stop()
            self._bar = None


def _console(stream: IO[str]) -> Console:
    from rich.console import Console

    return Console(file=stream)


class ProgressSink:
    """Wraps any sink so every finished record also ticks the progress."""

    def __init__(self, sink: Any, progress: Progress):
        self.sink, self.progress = sink, progress

    def finished(self, record: dict[str, Any], failed: bool) -> None:
        self.sink.finished(record, failed)
        self.progress.record(failed)

    def streamed(self, item: Any, event: Any) -> None:
        self.sink.streamed(item, event)
