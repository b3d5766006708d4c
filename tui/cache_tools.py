"""The models screen's data: the cache tools (lm-cache-ls, lm-model-info, lm-cache-rm) run as
subprocesses, their JSONL read back. A tool that is not installed is reported, not raised.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from typing import Any

import orjson

from lmpipe.cli.commands import executable, installed
from lmpipe.records.jsonl import encode

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
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as lm-cache-ls wrote it

    @property
    def target(self) -> str:
        """What lm-model-info is given: the alias or the folder of a converted model, else the id."""
        if self.record.get("alias"):
            return str(self.record["alias"])
        return self.path if self.kind == "converted" and self.path else self.id

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> CachedModel:
        revisions = r.get("revisions")
        files = r.get("files")
        return cls(
            str(r.get("id", "?")), str(r.get("kind", "")), int(r.get("size_bytes") or 0),
            len(revisions) if isinstance(revisions, list) else int(revisions or 0),
            len(files) if isinstance(files, list) else int(files or 0),
            r.get("last_accessed"), r.get("last_modified"), str(r.get("path", "")), dict(r),
        )


def _run(tool: str, *args: str, stdin: bytes | None = None, timeout: float = 120) -> list[dict[str, Any]]:
    if not installed(tool):
        raise ToolMissing(tool)
    try:
        proc = subprocess.run([executable(tool), *args], input=stdin if stdin is not None else b"",
                              capture_output=True, timeout=timeout)
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


def model_info(model: CachedModel) -> dict[str, Any]:
    records = _run(INFO, model.target)
    if not records:
        raise ToolFailed(f"{INFO} returned nothing for {model.target}")
    if "error" in records[0]:
        raise ToolFailed(str(records[0]["error"]))
    return records[0]


def remove_model(model: CachedModel) -> list[dict[str, Any]]:
    """Delete a model by handing lm-cache-rm its lm-cache-ls record, as `lm-cache-ls | lm-cache-rm` does."""
    records = _run(REMOVE, "--yes", stdin=encode(model.record or {"id": model.id}))
    failed = [r["error"] for r in records if "error" in r]
    if failed:
        raise ToolFailed(str(failed[0]))
    return records


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"
