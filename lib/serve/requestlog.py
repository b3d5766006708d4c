"""lm-serve's --log: every generation request and its answer (or its error) as one JSONL record.

A record holds when the request came (`time`, UTC), the `client`'s address, the `endpoint`, the
HTTP `status`, the request's `model`, `messages` or `prompt` as sent, and then either the answer
(`generated`: the first choice's text, `choices` with every one when `n` > 1, its `stats` as
lm-generate's records have them, `usage`, the `manifest`) or the `error` and its `code`.
A client that left mid-stream is status 499 (nginx's "client closed request") with an error.
So `lm-stats < serve.log` summarises the server's latency per model as it does any lmpipe output.

Each record is one line appended whole and fsync'd before the next; past `max_bytes` the file
rotates as logging's RotatingFileHandler rotates (serve.log.1, ... up to `backups` old files).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson

BACKUPS = 5  # old files kept when the log rotates
REQUEST_FIELDS = ("model", "messages", "prompt")


class _SyncedFile(logging.handlers.RotatingFileHandler):
    """logging's size-rotating file, each record on disk (fsync) before the write returns."""

    def __init__(self, path: str, max_bytes: int, backups: int, failed: Callable[[str], None]):
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.failed = failed

    def flush(self) -> None:
        super().flush()
        if self.stream is not None:
            os.fsync(self.stream.fileno())

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failed(f"cannot write the request log {self.baseFilename}: {sys.exc_info()[1]}")


class RequestLog:
    """The log file; `write` may be called from any thread (records never interleave)."""

    def __init__(self, path: str, max_bytes: int = 0, backups: int = BACKUPS,
                 failed: Callable[[str], None] = lambda message: None):
        self.path = path
        self.file = _SyncedFile(path, max_bytes, backups, failed)

    def write(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        self.file.handle(logging.makeLogRecord({"msg": line, "args": None}))

    def close(self) -> None:
        self.file.close()


def request_fields(raw: bytes) -> dict[str, Any]:
    """What a record keeps of a request body: its model, messages or prompt (none if not JSON)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return {name: body[name] for name in REQUEST_FIELDS if isinstance(body, dict) and body.get(name) is not None}
