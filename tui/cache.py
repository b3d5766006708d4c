"""The models screen's data: the cache tools (lm-cache-ls, lm-model-info, lm-cache-rm) run as
subprocesses, their JSONL read back. A tool that is not installed is reported, not raised.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any

import orjson

from .tools import executable, installed

LIST, INFO, REMOVE = "lm-cache-ls", "lm-model-info", "lm-cache-rm"


class ToolMissing(Exception):
    def __init__(self, tool: str):
        super().__init__(f"{tool} is not installed (it comes with lmpipe's cache tools)")
        self.tool = tool


class ToolFailed(Exception):
    pass


@dataclass(frozen=True)
class CachedModel:
    id: str
    kind: str
    size_bytes: int
    revisions: int
    files: int
    last_accessed: Any
    last_modified: Any
    path: str

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> CachedModel:
        revisions = r.get("revisions")
        files = r.get("files")
        return cls(
            str(r.get("id", "?")), str(r.get("kind", "")), int(r.get("size_bytes") or 0),
            len(revisions) if isinstance(revisions, list) else int(revisions or 0),
            len(files) if isinstance(files, list) else int(files or 0),
            r.get("last_accessed"), r.get("last_modified"), str(r.get("path", "")),
        )


def _run(tool: str, *args: str, timeout: float = 120) -> list[dict[str, Any]]:
    if not installed(tool):
        raise ToolMissing(tool)
    try:
        proc = subprocess.run([executable(tool), *args], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{tool} took longer than {timeout:.0f} s") from None
    records = []
    for line in proc.stdout.splitlines():
        if line.strip():
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(value, dict):
                records.append(value)
    if proc.returncode != 0 and not records:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ToolFailed(message[-1] if message else f"{tool} exited with {proc.returncode}")
    return records


def list_models() -> list[CachedModel]:
    """Every cached model, largest first."""
    models = [CachedModel.from_record(r) for r in _run(LIST) if "error" not in r]
    return sorted(models, key=lambda m: (-m.size_bytes, m.id))


def model_info(model_id: str) -> dict[str, Any]:
    try:
        records = _run(INFO, model_id)
    except ToolFailed:
        records = _run(INFO, "--model", model_id)  # in case the tool takes the id as an option
    if not records:
        raise ToolFailed(f"{INFO} returned nothing for {model_id}")
    if "error" in records[0]:
        raise ToolFailed(str(records[0]["error"]))
    return records[0]


def remove_model(model_id: str) -> list[dict[str, Any]]:
    return _run(REMOVE, "--yes", model_id)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
