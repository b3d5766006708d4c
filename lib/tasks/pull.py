"""lm-pull: download model snapshots into the hub cache, named as arguments or in stdin's records."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import LmpipeError, RecordError, UsageError
from ..models.adapters import Adapter
from ..models.merged import MergeSettings, write_merged
from ..models.pull import PROGRESS_MODES, ByteProgress, PullSettings, choose_progress, pull
from ..records.jsonl import Item, error_record, failure_text, read_items
from ..records.pipe import JsonlSink, each_name, finish, say
from ..records.runner import Finished
from ..records.runner import run as run_items
from ..terminal.tables import human_size

TOOL = "lm-pull"


def repo_of(record: dict[str, Any]) -> str:
    name = record.get("id") or record.get("model") or record.get("text")
    if not name:
        raise RecordError("the record names no repo (no `id`, `model` or `text` field)")
    return str(name)


def done_line(record: dict[str, Any]) -> str:
    return (f"{record['id']}@{record['revision'][:12]}: {record['files']} files, "
            f"{human_size(record['size_bytes'])} ({human_size(record['downloaded_bytes'])} downloaded) "
            f"in {record['path']}")


class PullTtySink:
    def finished(self, record: dict[str, Any], failed: bool) -> None:
        if failed:
            say(TOOL, failure_text(record))
        else:
            print(done_line(record), flush=True)

    def streamed(self, item: Item, event: Any) -> None:
        pass


def run(tty: bool, stdin_tty: bool, stderr_tty: bool, repos: tuple[str, ...], revision: str | None,
        include: tuple[str, ...], exclude: tuple[str, ...], cache_dir: str | None, progress: str,
        adapter: tuple[str, ...] = (), merge: str | None = None) -> int:
    if progress not in PROGRESS_MODES:
        raise UsageError(f"--progress must be one of {', '.join(PROGRESS_MODES)}")
    if merge is not None or adapter:
        return merged(tty, repos, adapter, merge)
    mode = choose_progress(progress, stderr_tty)
    sink = PullTtySink() if tty else JsonlSink()
    options = {"include": include, "exclude": exclude, "cache_dir": Path(cache_dir).expanduser() if cache_dir else None}

    def one(name: str) -> dict[str, Any]:
        settings = PullSettings.parse(name, revision, **options)
        return pull(settings, ByteProgress(TOOL, settings.repo_id, mode))

    if repos or stdin_tty:
        if not repos:
            raise UsageError("name a repo to pull (org/name[@revision][:TAG]), or pipe records with an `id` in")
        return each_name(TOOL, repos, one, lambda record: sink.finished(record, False))

    def process(batch: list[Item]) -> Iterable[Finished]:
        for item in batch:
            record = item.record
            assert record is not None  # run_items hands over only the lines that were records
            try:
                yield Finished(item, {**record, **one(repo_of(record))})
            except LmpipeError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)

    return finish(TOOL, run_items(read_items(sys.stdin.buffer), process, sink))


def merged(tty: bool, repos: tuple[str, ...], adapters: tuple[str, ...], folder: str | None) -> int:
    """--merge DIR: the one model named (as --model takes it; pull a hub repo first) with --adapter's
    merged into its weights, written to DIR (lmpipe.models.merged); its record on stdout."""
    import orjson

    if folder is None:
        raise UsageError("--adapter goes with --merge DIR (lm-pull writes a merged model there)")
    if len(repos) != 1:
        raise UsageError("--merge takes one model: name it as -m does (lm-pull a hub repo first)")
    settings = MergeSettings(repos[0], tuple(Adapter.parse(a) for a in adapters), Path(folder).expanduser())
    record = write_merged(settings, lambda message: say(TOOL, message))
    if tty:
        print(f"{record['id']} + {len(record['adapters'])} adapter(s): {record['files']} files in {record['path']}",
              flush=True)
    else:
        sys.stdout.buffer.write(orjson.dumps(record) + b"\n")
        sys.stdout.flush()
    return 0
