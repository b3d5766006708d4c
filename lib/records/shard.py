"""--shard I/N: this worker takes every N-th input line starting at line I (0-based), no coordination.

Lines are counted as read_items counts them (blank lines included), so N workers over the same
file split it exactly: every line falls in one shard, and the union of the shards is a full run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ..errors import UsageError
from .jsonl import Item


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: need I/N with N >= 1 and 0 <= I < N")

    @classmethod
    def parse(cls, text: str | None) -> Shard:
        if not text:
            return cls()
        index, sep, count = text.partition("/")
        if not sep or not index.strip().isdigit() or not count.strip().isdigit():
            raise UsageError(f"--shard {text!r}: expected I/N, for example 0/4")
        return cls(int(index), int(count))

    def takes(self, line: int) -> bool:
        """Whether the 1-based input line `line` belongs to this shard."""
        return (line - 1) % self.count == self.index

    def select(self, items: Iterable[Item]) -> Iterator[Item]:
        if self.count == 1:
            yield from items
            return
        for item in items:
            if self.takes(item.line):
                yield item

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
