"""The JSONL contract, in one place.

Input: one JSON object per line; a line that is not a JSON object is taken as {"text": line}.
A line that starts like an object but does not parse, or is not UTF-8, is an error item.
Output: the input record with the tool's fields added, one line each, flushed per record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

MAX_LINE_BYTES = 64 * 1024 * 1024  # past this a line is an error record, read and dropped in chunks
_PREVIEW = 80


@dataclass(frozen=True)
class Item:
    """One input line: its 1-based number and either its record or why it has none."""

    line: int
    record: dict[str, Any] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_line(raw: bytes, line: int) -> Item | None:
    """Parse one line (without or with its newline); None for a blank line."""
    stripped = raw.strip()
    if not stripped:
        return None
    if stripped.startswith(b"{"):
        try:
            value = orjson.loads(stripped)
        except orjson.JSONDecodeError as exc:
            return Item(line, None, f"invalid JSON: {exc}")
        if isinstance(value, dict):
            return Item(line, value)
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as exc:
        return Item(line, None, f"invalid UTF-8 at byte {exc.start}")
    return Item(line, {"text": text})


def read_items(stream: IO[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[Item]:
    """Yield an Item for every non-blank line of a binary stream, lazily, in order."""
    number = 0
    while True:
        raw = stream.readline(max_line_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield Item(number, None, f"line longer than {max_line_bytes} bytes")
            continue
        item = parse_line(raw, number)
        if item is not None:
            yield item


def error_record(item: Item, message: str) -> dict[str, Any]:
    """The output for a record that failed: its input passed through, plus `error` and `line`."""
    out = dict(item.record) if item.record is not None else {}
    out["error"] = message
    out["line"] = item.line
    return out


def failure_text(record: dict[str, Any]) -> str:
    """How a failed record is named to a person: its line and its error (or, for a line of OpenAI's
    batch output, its custom_id and the error its response or its `error` holds)."""
    error, response = record.get("error"), record.get("response")
    if isinstance(error, dict):
        return f"line {error.get('line')}: {error.get('message')}"
    if isinstance(response, dict):
        body = response.get("body")
        problem = body.get("error") if isinstance(body, dict) else None
        message = problem.get("message") if isinstance(problem, dict) else body
        return f"custom_id {record.get('custom_id')}: status {response.get('status_code')}: {message}"
    return f"line {record.get('line')}: {error}"


def encode(record: dict[str, Any]) -> bytes:
    # Non-string keys and numpy values can come from models; orjson handles both with these options.
    return orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def preview(text: str, width: int = _PREVIEW) -> str:
    """A one-line excerpt of text for messages."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class RecordWriter:
    """Writes records as JSONL and flushes each one, so downstream stages stream."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self.written = 0
        self.failed = 0

    def write(self, record: dict[str, Any], failed: bool = False) -> None:
        self._stream.write(encode(record))
        self._stream.flush()
        self.written += 1
        self.failed += failed
