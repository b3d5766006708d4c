"""lm-chunk's task: one record per token-bounded chunk of a long text, with what reassembles it.

Only a tokenizer is loaded: the `tokenizers` library reads the model's tokenizer.json with its
tokenizer_config.json applied (lmpipe.models.fast_tokenizer: no torch, no transformers); a model
without one falls back to transformers' own tokenizer loader, and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chat.prompts import text_of
from ..errors import RecordError, UsageError
from ..models.fast_tokenizer import load_any
from ..models.resolve import resolve
from ..records.jsonl import Item, error_record
from ..records.pipe import JsonlSink, PipeSettings, run_records, say
from ..records.runner import Finished
from ..text.chunking import chunk

CHUNKS = "\0chunks"  # a finished record that stands for several output records


@dataclass(frozen=True)
class ChunkSettings:
    max_tokens: int = 512
    overlap: int = 64
    field: str = "text"
    id_field: str = "id"

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise UsageError("--max-tokens must be at least 1")
        if not 0 <= self.overlap < self.max_tokens:
            raise UsageError("--overlap must be at least 0 and less than --max-tokens")


def tokenizer_file(tokenizer: str) -> Path:
    """The tokenizer.json --tokenizer names (the file, or a folder holding one)."""
    path = Path(tokenizer).expanduser()
    if path.is_file():
        return path
    if (path / "tokenizer.json").is_file():
        return path / "tokenizer.json"
    raise UsageError(f"--tokenizer {tokenizer}: no tokenizer.json there")


def offsets_encoder(model: str | None, tokenizer: str | None) -> Callable[[str], Sequence[tuple[int, int]]]:
    """text -> one character span per token, without special tokens."""
    if tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file(tokenizer)))
        return lambda text: tok.encode(text, add_special_tokens=False).offsets
    model_tok = load_any(resolve(model), lambda message: say("lm-chunk", message))
    if model_tok.encode("x", add_special_tokens=False).offsets is None:
        raise UsageError(f"{model}: lm-chunk needs a fast tokenizer (tokenizer.json); this one has none")
    return lambda text: model_tok.encode(text, add_special_tokens=False).offsets or []  # checked above


class ChunkTask:
    def __init__(self, encode: Callable[[str], Sequence[tuple[int, int]]], settings: ChunkSettings):
        self.encode, self.settings = encode, settings

    def split(self, item: Item) -> list[dict[str, Any]]:
        record = item.record or {}
        text = text_of(record, self.settings.field)
        source = record.get(self.settings.id_field, item.line)
        spans = chunk(text, self.encode, self.settings.max_tokens, self.settings.overlap)
        out = []
        for k, c in enumerate(spans):
            piece = dict(record)
            piece[self.settings.field] = text[c.start:c.end]
            piece.update({"source": source, "chunk": k, "chunks": len(spans), "start": c.start, "end": c.end,
                          "tokens": c.tokens})
            out.append(piece)
        return out

    def process(self, batch: list[Item]) -> Iterator[Finished]:
        for item in batch:
            try:
                yield Finished(item, {CHUNKS: self.split(item)})
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)


class ChunkSink:
    """Writes each chunk of a finished record as its own line."""

    def __init__(self, sink: Any):
        self.sink = sink

    def finished(self, record: dict[str, Any], failed: bool) -> None:
        for piece in record.get(CHUNKS, [record]):
            self.sink.finished(piece, failed)

    def streamed(self, item: Any, event: Any) -> None:
        pass


@dataclass(frozen=True)
class ChunkRun:
    """One lm-chunk run: the chunk sizes, whose tokens count (a model's or a tokenizer folder's), the records."""

    settings: ChunkSettings = field(default_factory=ChunkSettings)
    model: str | None = None
    tokenizer: str | None = None
    pipe: PipeSettings = field(default_factory=PipeSettings)


def run(r: ChunkRun) -> int:
    task = ChunkTask(offsets_encoder(r.model, r.tokenizer), r.settings)
    return run_records("lm-chunk", task.process, ChunkSink(JsonlSink()), batch_size=r.pipe.batch_size or 16,
                       progress=r.pipe.progress)
