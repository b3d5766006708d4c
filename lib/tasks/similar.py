"""lm-similar: the `top` records nearest a query by cosine, from lm-embed output (or any records with vectors).

The query is a vector or a record (model-free), or a text, embedded with the model the records were
embedded with (their manifest.model; --model overrides): the model loads only for a text query.
Records are read once, keeping the best `top` in a heap; ties keep input order.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from ..backends.embedding import Embedder, EmbedSettings, decoded
from ..errors import RecordError, UsageError
from ..models.loading import ModelSettings
from ..records.jsonl import RecordWriter, error_record, read_items
from ..records.pipe import EXIT_FAILED, EXIT_OK, say

SCORE_FIELD = "score"


@dataclass(frozen=True)
class SimilarRun:
    """One lm-similar run: the query (exactly one of text, vector, record), how many, which field."""

    text: str | None = None
    vector: str | None = None  # a JSON list of floats, or base64 float32 as lm-embed --format base64 writes
    record: str | None = None  # a JSON record holding the vector in `field` (a line of lm-embed output)
    top: int = 10
    field: str = "embedding"
    model: str | None = None  # for a text query: embed it with this model instead of the records' own

    def __post_init__(self) -> None:
        given = [name for name, v in (("QUERY", self.text), ("--vector", self.vector), ("--record", self.record))
                 if v is not None]
        if len(given) != 1:
            raise UsageError("give one query: a QUERY text, --vector or --record" if not given
                             else f"{' and '.join(given)}: give only one query")
        if self.top < 1:
            raise UsageError("--top must be at least 1")


def vector_of(value: Any, what: str):
    """A vector as a float64 array: a list of numbers, or base64 float32."""
    import numpy as np

    try:
        if isinstance(value, str) or (isinstance(value, list) and value
                                      and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)):
            vector = decoded(value).astype(np.float64)
            if vector.size and np.all(np.isfinite(vector)):
                return vector
    except ValueError:
        pass
    raise RecordError(f"{what} is not a vector (a list of numbers, or base64 float32)")


def parse_query_record(text: str, field: str) -> dict[str, Any]:
    import orjson

    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--record is not JSON: {exc}") from None
    if not isinstance(record, dict) or field not in record:
        raise UsageError(f"--record must be a JSON object with a {field!r} field")
    return record


class Query:
    """The query vector, made when the first record is seen (a text needs that record's model)."""

    def __init__(self, r: SimilarRun, embed_text: Callable[[str, str], Any]):
        self.r, self.embed_text = r, embed_text
        self.skip_id: Any = None
        self.vector: Any = None
        try:
            if r.vector is not None:
                import orjson

                value = orjson.loads(r.vector) if r.vector.lstrip().startswith("[") else r.vector.strip()
                self.vector = vector_of(value, "--vector")
            elif r.record is not None:
                record = parse_query_record(r.record, r.field)
                self.vector = vector_of(record[r.field], f"--record's {r.field!r}")
                self.skip_id = record.get("id")  # the query record itself is not its own neighbour
        except RecordError as exc:
            raise UsageError(str(exc)) from None
        except ValueError as exc:
            raise UsageError(f"--vector is not a JSON list or base64: {exc}") from None

    def against(self, record: dict[str, Any]):
        if self.vector is None:
            model = self.r.model or (record.get("manifest") or {}).get("model")
            if not model:
                raise UsageError("a text query needs the records' model (manifest.model, from lm-embed) or --model")
            self.vector = self.embed_text(model, self.r.text or "")
        return self.vector


def nearest(items, query: Query, top: int, field: str, on_error: Callable[[dict[str, Any]], None]) -> list[dict]:
    import numpy as np

    heap: list[tuple[float, int, dict[str, Any]]] = []
    for item in items:
        if not item.ok:
            on_error(error_record(item, item.error or "bad record"))
            continue
        record = item.record or {}
        if query.skip_id is not None and record.get("id") == query.skip_id:
            continue
        try:
            if field not in record:
                raise RecordError(f"record has no {field!r} field (choose one with --field)")
            vector = vector_of(record[field], f"{field!r}")
            q = query.against(record)
            if vector.shape != q.shape:
                raise RecordError(f"{field!r} has {vector.size} dimensions; the query has {q.size}")
            norms = float(np.linalg.norm(vector) * np.linalg.norm(q))
            if norms == 0:
                raise RecordError(f"{field!r} is all zeros: it has no direction")
        except RecordError as exc:
            on_error(error_record(item, str(exc)))
            continue
        score = float(vector @ q) / norms
        entry = (score, -item.line, record)
        if len(heap) < top:
            heapq.heappush(heap, entry)
        elif entry[:2] > heap[0][:2]:
            heapq.heapreplace(heap, entry)
    ranked = sorted(heap, key=lambda e: (e[0], e[1]), reverse=True)
    return [{**record, SCORE_FIELD: round(score, 6)} for score, _, record in ranked]


def embed_query(settings: SimilarRun) -> Callable[[str, str], Any]:
    def embed(model: str, text: str):
        return Embedder(ModelSettings(model)).embed_texts([text], EmbedSettings(chunk=True))[0].astype("float64")

    return embed


def run(r: SimilarRun, source: IO[bytes] | None = None) -> int:
    writer = RecordWriter(sys.stdout.buffer)
    failed: list[dict[str, Any]] = []

    def on_error(record: dict[str, Any]) -> None:
        failed.append(record)
        writer.write(record, failed=True)

    query = Query(r, embed_query(r))
    for record in nearest(read_items(source or sys.stdin.buffer), query, r.top, r.field, on_error):
        writer.write(record)
    if failed:
        say("lm-similar", f"{len(failed)} records had no usable vector (first: line {failed[0].get('line')}: "
                          f"{failed[0].get('error')})")
        return EXIT_FAILED
    return EXIT_OK
