"""--output FILE [--resume]: results appended to a file durably, and a rerun that skips what is done.

Every record is written whole and fsync'd before the next one is written, so a run killed at any
moment leaves at most one partial last line; --resume cuts that line off, reads which records the
file holds, and the rerun processes only the others. A record is known by its `id` when it has one
(a tool may name another key field: lm-batch's `custom_id`), otherwise by the SHA-256 of its input (canonical JSON),
which the written record carries in
`input_sha256`. Identical inputs are counted, so a file with the same record twice stays right.
Records cut short by Ctrl-C ("interrupted") are not written: the rerun does them.
Without --resume an existing non-empty FILE is an error, never overwritten.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import UsageError
from .jsonl import Item, encode
from .runner import INTERRUPTED

KEY_FIELD = "input_sha256"


def input_hash(item: Item) -> str:
    if item.record is not None:
        data = orjson.dumps(item.record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    else:  # a line that was not a record: known by where it was and what was wrong with it
        data = f"line {item.line}: {item.error}".encode()
    return hashlib.sha256(data).hexdigest()


def item_key(item: Item, key: str = "id") -> str:
    if item.record is not None and item.record.get(key) is not None:
        return f"{key}:" + orjson.dumps(item.record[key], option=orjson.OPT_SORT_KEYS).decode()
    return "sha256:" + input_hash(item)


def output_key(record: dict[str, Any], key: str = "id") -> str | None:
    """The key of a record read back from an output file (None: the file did not come from us)."""
    if record.get(key) is not None:
        return f"{key}:" + orjson.dumps(record[key], option=orjson.OPT_SORT_KEYS).decode()
    if isinstance(record.get(KEY_FIELD), str):
        return "sha256:" + str(record[KEY_FIELD])
    return None


def repair(path: Path) -> int:
    """Cut a partial last line (a run killed mid-write) off the file; return the bytes cut."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Walk back to the last newline, a block at a time.
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            f.seek(start)
            block = f.read(end - start)
            nl = block.rfind(b"\n")
            if nl >= 0:
                keep = start + nl + 1
                break
            end = start
        else:
            keep = 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        return size - keep


def done_keys(path: Path, key: str = "id") -> Counter[str]:
    """How many times each key is already in the output file."""
    done: Counter[str] = Counter()
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise UsageError(f"{path} line {number} is not JSON; it is not an lmpipe output to resume") from None
            found = output_key(record, key) if isinstance(record, dict) else None
            if found is None:
                raise UsageError(f"{path} line {number} has neither `{key}` nor `{KEY_FIELD}`; cannot resume it")
            done[found] += 1
    return done


@dataclass
class ResumeState:
    """What the output file already holds, and the keys of the items let through, in order."""

    done: Counter[str]
    pending: deque[str]
    skipped: int = 0
    key: str = "id"  # the field records are known by
    fd: int | None = None  # the output file, open and locked, until its FileSink takes it

    def select(self, items: Iterable[Item]) -> Iterator[Item]:
        """Items not yet in the output; remembers each one's key for the writer, in input order."""
        left = Counter(self.done)
        for item in items:
            key = item_key(item, self.key)
            if left[key] > 0:
                left[key] -= 1
                self.skipped += 1
                continue
            self.pending.append(key)
            yield item


def prepare_output(path_text: str, resume: bool, key: str = "id") -> tuple[Path, ResumeState]:
    """Check FILE before anything else runs and lock it; with --resume, then repair it and read what it holds."""
    path = Path(path_text)
    if path.is_dir():
        raise UsageError(f"--output {path}: is a folder")
    exists = path.exists() and path.stat().st_size > 0
    if exists and not resume:
        raise UsageError(f"--output {path} exists; add --resume to continue it, or remove it")
    if not path.parent.is_dir():
        raise UsageError(f"--output {path}: no such folder {path.parent}")
    fd = lock_output(path)  # before repairing or reading: a running job's last line may be half written
    done: Counter[str] = Counter()
    try:
        if exists:
            repair(path)
            done = done_keys(path, key)
    except BaseException:
        os.close(fd)
        raise
    return path, ResumeState(done, deque(), key=key, fd=fd)


def lock_output(path: Path) -> int:
    """FILE opened for appending (made if missing) and locked for this run alone, or a UsageError."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(f"--output {path} is being written by another run") from None
    return fd


class FileSink:
    """Appends finished records to FILE, each written whole and fsync'd; holds a lock while open."""

    def __init__(self, path: Path, state: ResumeState, sync_every: int = 1):
        self.path = path
        self.state = state
        self.sync_every = max(1, sync_every)
        self.written = 0
        self.dropped = 0
        self._unsynced = 0
        fd, state.fd = state.fd, None  # the lock prepare_output took, else a lock of its own
        self._fd = fd if fd is not None else lock_output(path)

    def finished(self, record: dict[str, Any], failed: bool) -> None:
        key = self.state.pending.popleft() if self.state.pending else None
        if failed and record.get("error") == INTERRUPTED:
            self.dropped += 1  # not done: the rerun does it
            return
        if key is not None and key.startswith("sha256:") and record.get(self.state.key) is None:
            record = {**record, KEY_FIELD: key.removeprefix("sha256:")}
        data = encode(record)
        view = memoryview(data)
        while view:  # one record, one write in practice; loop for the rare short write
            view = view[os.write(self._fd, view):]
        self.written += 1
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self.sync()

    def streamed(self, item: Item, event: Any) -> None:
        pass  # token events are for pipes and terminals, not for the results file

    def sync(self) -> None:
        if self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1
