"""Downloading a model snapshot into the hub cache, with huggingface_hub's own snapshot_download.

`org/name:Q4_K_M` downloads only the GGUF file of that type (lmpipe.models.gguf_tags).

huggingface_hub writes every file to a temporary `.incomplete` name and renames it into
`blobs/` only when complete, and resumes a connection dropped midway with a Range request;
this module adds progress for people (a bar) and programs (JSON events) and one-line errors.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import LmpipeError, UsageError, first_line
from .gguf_tags import pick_file, split

PROGRESS_MODES = ("auto", "bar", "json", "none")
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_EVERY_S = 0.25  # at most four progress events a second


@dataclass(frozen=True)
class PullSettings:
    repo_id: str
    revision: str | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    cache_dir: Path | None = None
    tag: str | None = None  # a GGUF quantization type: only that file

    def __post_init__(self) -> None:
        if not _REPO_ID.fullmatch(self.repo_id):
            raise UsageError(f"{self.repo_id!r} is not a hub repo id (org/name)")

    @classmethod
    def parse(cls, name: str, revision: str | None = None, **options: Any) -> PullSettings:
        """`org/name`, `org/name@revision`, either with `:TAG`; --revision wins over the @ suffix."""
        untagged, tag = split(name.strip())
        repo_id, _, at = untagged.partition("@")
        return cls(repo_id, revision or at or None, tag=tag, **options)


class ByteProgress:
    """Bytes downloaded so far, for a bar on a terminal or JSON events on stderr.

    Events: {"event": "started", "tool", "id", "unit": "bytes", "total": null},
    {"event": "progress", ..., "done", "total", "files_done", "files", "rate", "eta_s"} (bytes, bytes/s),
    {"event": "finished", ..., "done", "failed", "seconds"}.
    """

    def __init__(self, tool: str, repo_id: str, mode: str, stream: IO[str] | None = None):
        self.tool, self.id, self.mode = tool, repo_id, mode
        self.stream = stream or sys.stderr
        self.lock = threading.Lock()
        self.byte_bars: list[Any] = []
        self.files_done = self.files_total = 0
        self.started = time.perf_counter()
        self._last = 0.0
        self._bar: Any = None
        if mode == "json":
            self._emit({"event": "started", "tool": tool, "id": repo_id, "unit": "bytes", "total": None})
        elif mode == "bar":
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(TextColumn(repo_id), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
                                 console=Console(file=self.stream), transient=True)
            self._task = self._bar.add_task(repo_id, total=None, files="")
            self._bar.start()

    @property
    def done(self) -> int:
        return max((b.n for b in self.byte_bars), default=0)

    @property
    def total(self) -> int | None:
        return max((b.total or 0 for b in self.byte_bars), default=0) or None

    def changed(self, final: bool = False) -> None:
        with self.lock:
            now = time.perf_counter()
            if not final and now - self._last < _EVERY_S:
                return
            self._last = now
            done, total = self.done, self.total
            elapsed = now - self.started
            rate = done / elapsed if elapsed > 0 else 0.0
            if self.mode == "json":
                eta = (total - done) / rate if total and rate > 0 else None
                self._emit({"event": "progress", "tool": self.tool, "id": self.id, "unit": "bytes", "done": done,
                            "total": total, "files_done": self.files_done, "files": self.files_total,
                            "rate": round(rate, 1), "eta_s": None if eta is None else round(eta, 1)})
            elif self._bar is not None:
                files = f"{self.files_done}/{self.files_total} files" if self.files_total else ""
                self._bar.update(self._task, completed=done, total=total, files=files)

    def close(self, failed: bool = False) -> None:
        if self.mode == "json":
            self._emit({"event": "finished", "tool": self.tool, "id": self.id, "unit": "bytes", "done": self.done,
                        "failed": int(failed), "seconds": round(time.perf_counter() - self.started, 3)})
        elif self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _emit(self, event: dict[str, Any]) -> None:
        self.stream.write(orjson.dumps(event).decode() + "\n")
        self.stream.flush()

    def bar_class(self) -> type:
        """A stand-in for tqdm that snapshot_download drives, forwarding its counts here."""
        progress = self

        class Bar:
            def __init__(self, *args: Any, **kwargs: Any):
                self.n = kwargs.get("initial") or 0
                self.total = kwargs.get("total")
                self.bytes = kwargs.get("unit") == "B"
                if self.bytes:
                    progress.byte_bars.append(self)
                else:  # the bar counting files
                    progress.files_total = self.total or 0

            def update(self, n: float | None = 1) -> None:
                self.n += n or 0
                if not self.bytes:
                    progress.files_done = int(self.n)
                progress.changed()

            @property
            def format_dict(self) -> dict[str, Any]:
                return {"rate": None, "n": self.n, "total": self.total}

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: Any) -> None:
                pass

            def close(self) -> None:
                pass

            def refresh(self) -> None:
                pass

            def set_description(self, *args: Any, **kwargs: Any) -> None:
                pass

            set_description_str = set_postfix_str = set_description

        return Bar


def choose_progress(mode: str, stderr_tty: bool) -> str:
    if mode != "auto":
        return mode
    return "bar" if stderr_tty else "json"


def pull(settings: PullSettings, progress: ByteProgress) -> dict[str, Any]:
    """Download one snapshot; the record says what is now in the cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # resumes and retries are ours to report, not multi-line warnings
    started = time.perf_counter()
    failed = True
    chosen = None
    try:
        if settings.tag:
            chosen = _tagged_file(settings)
        folder = Path(snapshot_download(
            settings.repo_id, revision=settings.revision, cache_dir=settings.cache_dir,
            allow_patterns=[chosen] if chosen else list(settings.include) or None,
            ignore_patterns=None if chosen else list(settings.exclude) or None,
            tqdm_class=progress.bar_class(), token=os.environ.get("HF_TOKEN") or None))
        failed = False
    except LmpipeError:
        raise
    except Exception as exc:
        explained = _explain(exc, settings, constants.ENDPOINT, constants.is_offline_mode())
        if explained is exc:
            raise
        raise explained from None
    finally:
        progress.changed(final=True)
        progress.close(failed)
    files = [p for p in folder.rglob("*") if p.is_file()]
    record: dict[str, Any] = {"id": settings.repo_id, "revision": folder.name, "path": str(folder),
                              "files": len(files), "size_bytes": sum(p.stat().st_size for p in files),
                              "downloaded_bytes": progress.done,
                              "seconds": round(time.perf_counter() - started, 3)}
    if settings.revision and settings.revision != folder.name:
        record["ref"] = settings.revision
    if chosen:
        record["file"] = str(folder / chosen)
    return record


def _tagged_file(settings: PullSettings) -> str:
    """The repo's one GGUF file of the settings' tag (a one-line error listing the tags present otherwise)."""
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files(settings.repo_id, revision=settings.revision,
                                    token=os.environ.get("HF_TOKEN") or None)
    return pick_file(files, settings.tag or "", settings.repo_id, "on the hub")


def _explain(exc: Exception, settings: PullSettings, endpoint: str, offline: bool) -> Exception:
    """huggingface_hub's exceptions as one line that says what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    name = settings.repo_id
    if isinstance(exc, GatedRepoError):
        return UsageError(f"{name} is gated or private: set HF_TOKEN to a token that has access")
    if isinstance(exc, RepositoryNotFoundError):
        return UsageError(f"no repo {name} on {endpoint} (or it is private: set HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return UsageError(f"{name} has no revision {settings.revision!r}")
    if offline and isinstance(exc, LocalEntryNotFoundError):
        return LmpipeError(f"offline (HF_HUB_OFFLINE is set) and {name} is not complete in the cache")
    if isinstance(exc, LocalEntryNotFoundError):
        cause = exc.__cause__ or exc
        return LmpipeError(f"cannot reach {endpoint} for {name}: {first_line(cause)}")
    # network errors past huggingface_hub's retries, consistency checks, disk
    if isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in ("httpx", "httpx2"):
        return LmpipeError(f"download of {name} failed: {first_line(exc)}")
    return exc  # a bug: guarded() reports it
