"""Drives a tool over its input: batches in, records out in input order, nothing lost.

A task's `process` takes a batch of good items and yields `Finished` records (in any order)
and `Streamed` events (written at once). The runner turns bad items into error records,
writes finished records in input order, and on Ctrl-C writes what it has plus an
"interrupted" error record for every item read but not finished.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

from .jsonl import Item, error_record, failure_text

INTERRUPTED = "interrupted before this record was finished"


@dataclass(frozen=True)
class Finished:
    item: Item
    record: dict[str, Any]
    failed: bool = False


@dataclass(frozen=True)
class Streamed:
    """Anything a task reports while it works: a token, a progress tick."""

    item: Item
    event: Any


class Sink(Protocol):
    def finished(self, record: dict[str, Any], failed: bool) -> None: ...

    def streamed(self, item: Item, event: Any) -> None: ...


Process = Callable[[list[Item]], Iterable[Finished | Streamed]]


@dataclass
class Summary:
    read: int = 0
    written: int = 0
    failed: int = 0
    interrupted: bool = False
    failures: list[str] = field(default_factory=list)


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


class _InOrder:
    """One batch's records, each written as soon as every record before it is written."""

    def __init__(self, batch: list[Item], sink: Sink, summary: Summary):
        self.batch, self.sink, self.summary = batch, sink, summary
        self.done: dict[int, tuple[dict[str, Any], bool]] = {}
        self.cursor = 0  # batch[:cursor] is written

    def add(self, line: int, record: dict[str, Any], failed: bool) -> None:
        self.done[line] = (record, failed)
        self.flush()

    def flush(self) -> None:
        while self.cursor < len(self.batch) and self.batch[self.cursor].line in self.done:
            record, failed = self.done.pop(self.batch[self.cursor].line)
            # Advance first: a Ctrl-C during the write must not write this record again as unfinished.
            self.cursor += 1
            self.summary.written += 1
            if failed:
                self.summary.failed += 1
                self.summary.failures.append(failure_text(record))
            self.sink.finished(record, failed)

    def interrupt(self) -> None:
        """Write what is finished, and every record not yet written as unfinished."""
        for item in self.batch[self.cursor:]:
            self.done.setdefault(item.line, (error_record(item, INTERRUPTED), True))
        self.flush()


def run(items: Iterable[Item], process: Process, sink: Sink, batch_size: int = 1) -> Summary:
    summary = Summary()
    for batch in batched(items, max(1, batch_size)):
        summary.read += len(batch)
        in_order = _InOrder(batch, sink, summary)
        try:
            for item in batch:
                if not item.ok:
                    in_order.add(item.line, error_record(item, item.error or "bad record"), True)
            good = [item for item in batch if item.ok]
            for out in process(good) if good else ():
                if isinstance(out, Streamed):
                    sink.streamed(out.item, out.event)
                else:
                    in_order.add(out.item.line, out.record, out.failed)
        except KeyboardInterrupt:
            summary.interrupted = True
            in_order.interrupt()
            raise _Interrupted(summary) from None
    return summary


class _Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what was done so the edge can report it."""

    def __init__(self, summary: Summary):
        super().__init__()
        self.summary = summary
