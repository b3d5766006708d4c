"""lm-embed's task: an embedding for the text of every record, embedded a batch at a time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..backends.embedding import ENCODINGS, Embedder, EmbedSettings, encoded
from ..chat.prompts import text_of
from ..errors import RecordError, UsageError
from ..models.loading import ModelSettings
from ..models.resolve import DEFAULT_EMBEDDING_MODEL
from ..records.jsonl import Item, error_record
from ..records.pipe import JsonlSink, PipeSettings, run_records
from ..records.runner import Finished


@dataclass(frozen=True)
class EmbedRun:
    """One lm-embed run: the model, how vectors are made and written, over which records."""

    settings: EmbedSettings = field(default_factory=EmbedSettings)
    model: ModelSettings = field(default_factory=lambda: ModelSettings(DEFAULT_EMBEDDING_MODEL))
    pipe: PipeSettings = field(default_factory=PipeSettings)
    field: str = "text"
    out: str = "embedding"
    encoding: str = "float"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise UsageError(f"--format must be one of {', '.join(ENCODINGS)}")


class EmbedTask:
    def __init__(self, embedder: Embedder, r: EmbedRun):
        self.embedder, self.r = embedder, r
        self.manifest = embedder.manifest(r.settings)

    def process(self, batch: list[Item]) -> Iterator[Finished]:
        good: list[tuple[Item, list[int]]] = []
        for item in batch:
            try:
                good.append((item, self.embedder.token_ids(text_of(item.record or {}, self.r.field))))
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)
        if not good:
            return
        try:
            vectors = self.embedder.embed_ids([ids for _, ids in good], self.r.settings, len(good))
        except RecordError:  # some text is too long: embed one at a time, so only that record fails
            yield from (self._one(item, ids) for item, ids in good)
            return
        for (item, _), vector in zip(good, vectors, strict=True):
            yield Finished(item, self.record(item, vector))

    def _one(self, item: Item, ids: list[int]) -> Finished:
        try:
            return Finished(item, self.record(item, self.embedder.embed_ids([ids], self.r.settings)[0]))
        except RecordError as exc:
            return Finished(item, error_record(item, str(exc)), failed=True)

    def record(self, item: Item, vector: Any) -> dict[str, Any]:
        return {**(item.record or {}), self.r.out: encoded(vector, self.r.encoding), "dimensions": len(vector),
                "manifest": self.manifest}


def run(r: EmbedRun) -> int:
    job = r.pipe.job.open()  # an existing --output without --resume fails here, before the model loads
    task = EmbedTask(Embedder(r.model), r)
    return run_records("lm-embed", task.process, JsonlSink(), r.pipe.batch_size or 32, r.pipe.progress,
                       job=job)
