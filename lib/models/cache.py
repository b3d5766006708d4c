"""The models on disk: the Hugging Face hub cache and lmpipe's own converted models.

Scanning and deletion plans for the hub cache are huggingface_hub's own (`scan_cache_dir`,
`HFCacheInfo.delete_revisions`); this module adds lmpipe's converted GGUF models beside them,
counts the exact bytes a plan frees, and refuses any path outside the cache folders.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import paths
from ..errors import ModelNotFound, UsageError
from . import gguf
from .packaged import packaged_zip, unzipped_folder
from .resolve import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL, embedded_gguf


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Revision:
    """One cached commit of a model (a converted model has one, named by its GGUF's sha256)."""

    commit: str
    refs: tuple[str, ...]
    size_bytes: int
    files: int
    last_modified: float
    path: Path


@dataclass(frozen=True)
class Entry:
    """One model on disk."""

    id: str
    kind: str  # "hub" or "converted"
    size_bytes: int
    files: int
    last_accessed: float
    last_modified: float
    path: Path
    revisions: tuple[Revision, ...]
    source: str | None = None  # converted: the GGUF file it came from
    alias: str | None = None  # converted: the alias naming it, for the embedded default model

    def record(self) -> dict[str, Any]:
        out = {"id": self.id, "kind": self.kind, "size_bytes": self.size_bytes, "revisions": len(self.revisions),
               "files": self.files, "last_accessed": iso(self.last_accessed),
               "last_modified": iso(self.last_modified), "path": str(self.path)}
        if self.source:
            out["source"] = self.source
        if self.alias:
            out["alias"] = self.alias
        return out

    def revision_records(self) -> list[dict[str, Any]]:
        newest_first = sorted(self.revisions, key=lambda r: r.last_modified, reverse=True)
        return [{"id": self.id, "kind": self.kind, "revision": r.commit, "refs": list(r.refs),
                 "size_bytes": r.size_bytes, "files": r.files, "last_modified": iso(r.last_modified),
                 "path": str(r.path)} for r in newest_first]


@dataclass
class Cache:
    """A scan of both cache folders, largest models first."""

    hub_dir: Path
    models_dir: Path
    entries: list[Entry]
    hub: Any = None  # huggingface_hub's HFCacheInfo, None when the hub cache does not exist
    warnings: list[str] = field(default_factory=list)

    @property
    def roots(self) -> tuple[Path, Path]:
        return self.hub_dir, self.models_dir

    @property
    def total_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries)

    def find(self, model_id: str) -> list[Entry]:
        return [e for e in self.entries if e.id == model_id]


def scan(hub_dir: Path | str | None = None, models_dir: Path | str | None = None) -> Cache:
    hub_dir = Path(hub_dir).expanduser() if hub_dir else paths.hub_cache_dir()
    models_dir = Path(models_dir).expanduser() if models_dir else paths.models_dir()
    hub, warnings, entries = _scan_hub(hub_dir)
    entries += _scan_converted(models_dir)
    entries.sort(key=lambda e: (-e.size_bytes, e.id))
    return Cache(hub_dir, models_dir, entries, hub, warnings)


def _scan_hub(hub_dir: Path) -> tuple[Any, list[str], list[Entry]]:
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    if not hub_dir.is_dir():
        return None, [], []
    try:
        info = scan_cache_dir(hub_dir)
    except CacheNotFound:
        return None, [], []
    entries = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        revisions = tuple(
            Revision(r.commit_hash, tuple(sorted(r.refs)), r.size_on_disk, r.nb_files, r.last_modified, r.snapshot_path)
            for r in repo.revisions)
        entries.append(Entry(repo.repo_id, "hub", repo.size_on_disk, repo.nb_files, repo.last_accessed,
                             repo.last_modified, repo.repo_path, revisions))
    return info, [str(w) for w in info.warnings], entries


def _scan_converted(models_dir: Path) -> list[Entry]:
    if not models_dir.is_dir():
        return []
    aliases = _alias_by_folder_name()
    entries = []
    for folder in sorted(models_dir.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or folder.is_symlink():
            continue
        info = gguf.conversion_info(folder)
        if info is None:
            continue  # not a finished conversion
        files = list(regular_files([folder]).items())
        size = sum(s.st_size for _, s in files)
        accessed = max((s.st_atime for _, s in files), default=folder.stat().st_atime)
        modified = max((s.st_mtime for _, s in files), default=folder.stat().st_mtime)
        revision = Revision(str(info.get("sha256") or ""), (), size, len(files), modified, folder)
        entries.append(Entry(folder.name, "converted", size, len(files), accessed, modified, folder, (revision,),
                             source=info.get("source"), alias=aliases.get(folder.name)))
    return entries


def _alias_by_folder_name() -> dict[str, str]:
    """The names the embedded models' folders have (content keys, read from the GGUF and the zip), to their aliases."""
    found = {}
    for alias, folder in ((DEFAULT_MODEL, lambda: gguf.converted_folder(embedded_gguf())),
                          (DEFAULT_EMBEDDING_MODEL, lambda: unzipped_folder(packaged_zip()))):
        try:
            found[folder().name] = alias
        except (ModelNotFound, OSError):
            pass
    return found


def regular_files(roots: Iterable[Path]) -> dict[Path, os.stat_result]:
    """Every regular file at or under `roots`, symlinks not followed (their targets are not theirs)."""
    found: dict[Path, os.stat_result] = {}
    for root in roots:
        try:
            st = os.lstat(root)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            found[Path(root)] = st
        elif stat.S_ISDIR(st.st_mode):
            for folder, _, names in os.walk(root):
                for name in names:
                    p = Path(folder) / name
                    st = os.lstat(p)
                    if stat.S_ISREG(st.st_mode):
                        found[p] = st
    return found


def inside(path: Path, roots: Iterable[Path]) -> bool:
    """Is `path` strictly inside one of `roots`? The path itself may be a symlink; its folder is resolved."""
    where = Path(os.path.realpath(path.parent)) / path.name
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if where != real_root and where.is_relative_to(real_root):
            return True
    return False


# ---- deletion ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deletion:
    """What deleting a model, or some of its revisions, removes, and the exact bytes that frees."""

    entry: Entry
    revisions: tuple[str, ...]  # the commits deleted
    whole: bool  # the whole model folder goes
    paths: tuple[Path, ...]  # what gets removed (folders recursively)
    freed_bytes: int  # the regular files removed, counted one by one
    strategy: Any = None  # huggingface_hub's DeleteCacheStrategy, for hub models

    def record(self, dry_run: bool) -> dict[str, Any]:
        return {"id": self.entry.id, "kind": self.entry.kind, "path": str(self.entry.path),
                "revisions": list(self.revisions), "whole": self.whole, "freed_bytes": self.freed_bytes,
                "dry_run": dry_run, "deleted": not dry_run}


def choose_revisions(entry: Entry, wanted: Iterable[str]) -> set[str]:
    """Commits of `entry` named by hash prefixes or ref names; UsageError when one names none or several."""
    chosen: set[str] = set()
    for want in wanted:
        hits = {r.commit for r in entry.revisions if want in r.refs} or \
               {r.commit for r in entry.revisions if want and r.commit.startswith(want)}
        if not hits:
            raise UsageError(f"{entry.id} has no cached revision {want!r}")
        if len(hits) > 1:
            raise UsageError(f"revision {want!r} of {entry.id} is ambiguous: {', '.join(sorted(h[:12] for h in hits))}")
        chosen |= hits
    return chosen


def plan(cache: Cache, entry: Entry, revisions: set[str] | None) -> Deletion:
    """Plan deleting `revisions` of `entry` (None: all of it). Deletes nothing."""
    every = {r.commit for r in entry.revisions}
    chosen = every if revisions is None else set(revisions)
    whole = chosen == every
    if entry.kind == "converted":
        removed = (entry.path,)
        strategy = None
    elif not entry.revisions:  # a repo folder with no snapshot left (blobs or partial downloads only)
        removed, strategy = (entry.path,), None
    else:
        strategy = cache.hub.delete_revisions(*sorted(chosen))
        removed = tuple(sorted({*strategy.repos, *strategy.snapshots, *strategy.refs, *strategy.blobs}))
    for p in removed:
        if not inside(p, cache.roots):
            raise UsageError(f"refusing to delete {p}: it is outside the cache folders {cache.hub_dir} and "
                             f"{cache.models_dir}")
    freed = sum(s.st_size for s in regular_files(removed).values())
    return Deletion(entry, tuple(sorted(chosen)), whole, removed, freed, strategy)


def execute(deletion: Deletion, cache: Cache) -> None:
    for p in deletion.paths:  # checked again: nothing outside the cache is ever removed
        if not inside(p, cache.roots):
            raise UsageError(f"refusing to delete {p}: it is outside the cache folders")
    if deletion.strategy is not None:
        deletion.strategy.execute()
        return
    folder = deletion.entry.path
    (folder / gguf.MARKER).unlink(missing_ok=True)  # first: a half-removed folder is never taken as a model
    shutil.rmtree(folder)
