"""Batch-job settings shared by every record tool: --output FILE, --resume, --shard I/N.

`JobSettings.open()` checks them before a model loads (an existing FILE without --resume is a
usage error), and `BatchJob` puts them between the input and the sink: the shard's lines only, minus
what FILE already holds, results appended to FILE instead of stdout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .jsonl import Item
from .resume import FileSink, ResumeState, prepare_output
from .shard import Shard


@dataclass(frozen=True)
class JobSettings:
    output: str | None = None
    resume: bool = False
    shard: Shard = field(default_factory=Shard)
    key: str = "id"  # the field --resume knows records by (lm-batch: custom_id)

    def __post_init__(self) -> None:
        if self.resume and not self.output:
            raise UsageError("--resume needs --output FILE")

    def open(self) -> BatchJob:
        """Check FILE now (before the model loads) and read what it already holds."""
        if self.output is None:
            return BatchJob(self, None, None)
        path, state = prepare_output(self.output, self.resume, self.key)
        return BatchJob(self, path, state)


@dataclass
class BatchJob:
    settings: JobSettings
    path: Path | None
    state: ResumeState | None
    _sink: FileSink | None = None

    @property
    def to_file(self) -> bool:
        return self.path is not None

    @property
    def already_done(self) -> int:
        return sum(self.state.done.values()) if self.state else 0

    def select(self, items: Iterable[Item]) -> Iterator[Item]:
        items = self.settings.shard.select(items)
        return self.state.select(items) if self.state is not None else iter(items)

    def expected(self, lines: int | None) -> int | None:
        """Records this run should write, from the input's line count (an estimate: blank lines count)."""
        if lines is None:
            return None
        s = self.settings.shard
        in_shard = (lines - s.index + s.count - 1) // s.count if lines > s.index else 0
        return max(0, in_shard - self.already_done)

    def sink(self, default: Any) -> Any:
        if self.path is None or self.state is None:
            return default
        self._sink = FileSink(self.path, self.state)
        return self._sink

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()

    @property
    def dropped(self) -> int:
        return self._sink.dropped if self._sink else 0
