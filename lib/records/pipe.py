"""A tool in a pipe: records from stdin through a task into a sink, the exit code, lines for people.

Exit codes: 0 every record succeeded, 1 some record failed (or a runtime error stopped the
tool), 2 a usage error (bad option, unknown model), 130 interrupted. lmpipe.cli.edge turns
failures into one line and exits with these codes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import LmpipeError, UsageError
from .job import JobSettings
from .jsonl import Item, RecordWriter, read_items
from .progress import MODES, Progress, ProgressSink, choose_mode, count_remaining_lines
from .runner import Process, Summary, run

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def debugging() -> bool:
    return os.environ.get("LMPIPE_DEBUG", "") not in ("", "0")


def say(tool: str, message: str) -> None:
    """One line for a person, on stderr."""
    print(f"{tool}: {message}", file=sys.stderr, flush=True)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


@dataclass(frozen=True)
class PipeSettings:
    """How a record tool runs over its input: records per batch, progress, and the batch job
    (--output FILE, --resume, --shard I/N)."""

    batch_size: int | None = None  # None: batch_size_for's default
    progress: str = "auto"
    job: JobSettings = field(default_factory=JobSettings)

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        if self.progress not in MODES:
            raise UsageError(f"--progress must be one of {', '.join(MODES)}")


def batch_size_for(requested: int | None, tty: bool) -> int:
    """The batch size asked for, or the default: one record at a time on a terminal, 8 in a pipe."""
    return requested or (1 if tty else 8)


class JsonlSink:
    """Writes finished records as JSONL; streamed events too when asked (`--stream`)."""

    def __init__(self, stream_events: bool = False, encode_event: Callable[[Item, Any], dict[str, Any]] | None = None):
        self.writer = RecordWriter(sys.stdout.buffer)
        self.stream_events = stream_events
        self.encode_event = encode_event

    def finished(self, record: dict[str, Any], failed: bool) -> None:
        self.writer.write(record, failed)

    def streamed(self, item: Item, event: Any) -> None:
        if self.stream_events and self.encode_event is not None:
            self.writer.write(self.encode_event(item, event))


def run_records(tool: str, process: Process, sink: Any, batch_size: int = 1, progress: str = "auto",
                source: IO[bytes] | None = None, job: Any = None,
                whole_input: Callable[[Iterable[Item]], Iterable[Item]] | None = None) -> int:
    """Run `process` over the records of `source` (stdin) into `sink`, with progress; return the exit code.

    `job` (an opened lmpipe.records.job.BatchJob) narrows the input to a shard, skips what --resume finds done,
    and sends the records to --output FILE instead of `sink`. `whole_input` sees every item before
    that narrowing (lm-batch finds duplicate custom_ids across shards and resumed runs).
    """
    source = source if source is not None else sys.stdin.buffer
    to_file = job is not None and job.to_file
    mode = choose_mode(progress, stdout_is_tty() and not to_file, sys.stderr.isatty())
    total = count_remaining_lines(source) if mode != "none" else None
    items: Iterable[Item] = read_items(source)
    if whole_input is not None:
        items = whole_input(items)
    extra: dict[str, Any] = {}
    if job is not None:
        total = job.expected(total)
        items = job.select(items)
        sink = job.sink(sink)
        if job.settings.resume:
            extra["skipped"] = job.already_done
    meter = Progress(tool, mode, total, **extra)
    try:
        summary: Summary = run(items, process, ProgressSink(sink, meter), batch_size)
    finally:
        meter.close()
        if job is not None:
            job.close()
    if job is not None and job.settings.resume and summary.read == 0 and job.already_done:
        say(tool, f"nothing left to do: {job.path} holds all {job.already_done} records")
        return EXIT_OK
    return finish(tool, summary)


def finish(tool: str, summary: Summary) -> int:
    if summary.read == 0:
        say(tool, "no input records")
        return EXIT_OK
    if summary.failed:
        first = summary.failures[0] if summary.failures else ""
        say(tool, f"{summary.failed} of {summary.read} records failed (first: {first})")
        return EXIT_FAILED
    return EXIT_OK


def each_name(tool: str, names: Iterable[str], one: Callable[[str], dict[str, Any]],
              show: Callable[[dict[str, Any]], None]) -> int:
    """Run `one` for every name given as an argument; a failure is one line on stderr and the
    tool goes on with the next name. Returns the worst exit code."""
    code = EXIT_OK
    for name in names:
        try:
            show(one(name))
        except LmpipeError as exc:
            if debugging():
                raise
            say(tool, f"error: {exc}")
            code = max(code, exc.exit_code)
    return code
