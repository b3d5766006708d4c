"""lm-cache-rm: delete cached models or some of their revisions, named as arguments or in
lm-cache-ls records on stdin. Everything is planned first, so --dry-run reports exactly what
the real run frees; nothing outside the cache folders is ever removed."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..errors import LmpipeError, UsageError
from ..models.cache import Cache, Deletion, Entry, choose_revisions, execute, inside, plan, scan
from ..records.jsonl import Item, RecordWriter, error_record, read_items
from ..records.pipe import EXIT_FAILED, EXIT_OK, say

TOOL = "lm-cache-rm"


@dataclass(frozen=True)
class Target:
    """One thing to delete, as asked: a model id or a folder, and revisions (none: all)."""

    item: Item
    name: str | None
    path: Path | None
    revisions: tuple[str, ...]


def targets_from_args(ids: tuple[str, ...], revisions: tuple[str, ...]) -> list[Target]:
    out = []
    for n, arg in enumerate(ids, 1):
        item = Item(n, {"id": arg})
        if arg.startswith((".", "/", "~")):
            out.append(Target(item, None, Path(arg).expanduser(), revisions))
        else:
            out.append(Target(item, arg, None, revisions))
    return out


def targets_from_records(items: list[Item], revisions: tuple[str, ...]) -> tuple[list[Target], list[dict]]:
    """lm-cache-ls records (a `path` wins over an `id`; a `revision` names one), or plain ids, one a line."""
    out, errors = [], []
    for item in items:
        if not item.ok:
            errors.append(error_record(item, item.error or "unreadable line"))
            continue
        r = item.record or {}
        path = Path(str(r["path"])).expanduser() if r.get("path") else None
        name = r.get("id") or r.get("text")
        if path is None and not name:
            errors.append(error_record(item, "the record names no model (no `id`, `path` or `text` field)"))
            continue
        revs = tuple(revisions) + ((str(r["revision"]),) if r.get("revision") else ())
        out.append(Target(item, str(name) if name else None, path, revs))
    return out, errors


def find(cache: Cache, target: Target) -> tuple[Entry, set[str] | None]:
    """The cached model a target names, and the commits to delete (None: all of them)."""
    if target.path is not None:
        if not inside(target.path, cache.roots):
            raise UsageError(f"refusing {target.path}: it is outside the cache folders {cache.hub_dir} and "
                             f"{cache.models_dir}")
        real = Path(os.path.realpath(target.path))
        for entry in cache.entries:
            if Path(os.path.realpath(entry.path)) == real:
                return entry, choose_revisions(entry, target.revisions) if target.revisions else None
            for rev in entry.revisions:
                if entry.kind == "hub" and Path(os.path.realpath(rev.path)) == real:
                    return entry, {rev.commit} | choose_revisions(entry, target.revisions)
        raise UsageError(f"{target.path} is not a cached model or revision folder")
    entries = cache.find(target.name or "")
    if not entries:
        raise UsageError(f"{target.name} is not in the cache")
    entry = entries[0]
    return entry, choose_revisions(entry, target.revisions) if target.revisions else None


def build_plans(cache: Cache, targets: list[Target]) -> tuple[list[Deletion], list[dict]]:
    wanted: dict[Path, tuple[Entry, set[str] | None]] = {}
    errors = []
    for target in targets:
        try:
            entry, revisions = find(cache, target)
        except LmpipeError as exc:
            errors.append(error_record(target.item, str(exc)))
            continue
        if entry.path in wanted:
            _, before = wanted[entry.path]
            revisions = None if before is None or revisions is None else before | revisions
        wanted[entry.path] = (entry, revisions)
    plans = []
    for entry, revisions in wanted.values():
        try:
            plans.append(plan(cache, entry, revisions))
        except LmpipeError as exc:
            errors.append({"id": entry.id, "path": str(entry.path), "error": str(exc)})
    return plans, errors


def confirm(question: str, out: TextIO, answer: TextIO) -> bool:
    """Ask until the answer is yes or no; an empty answer (or none) is no."""
    while True:
        out.write(f"{question} [y/N]: ")
        out.flush()
        reply = answer.readline()
        if not reply:
            return False
        reply = reply.strip().lower()
        if reply in ("y", "yes"):
            return True
        if reply in ("", "n", "no"):
            return False
        out.write("Error: invalid input\n")


def ask(question: str, stdin_tty: bool) -> bool:
    """A yes/no question on the terminal, even when stdin is a pipe of records."""
    if stdin_tty:
        return confirm(question, sys.stderr, sys.stdin)
    with open("/dev/tty", "w") as out, open("/dev/tty") as answer:
        out.write(f"{question} [y/N]: ")
        out.flush()
        return answer.readline().strip().lower() in ("y", "yes")


def can_ask(tty: bool, stdin_tty: bool) -> bool:
    if not tty:
        return False
    if stdin_tty:
        return True
    try:
        with open("/dev/tty"):
            return True
    except OSError:
        return False


def run(tty: bool, stdin_tty: bool, ids: tuple[str, ...], revision: tuple[str, ...], dry_run: bool, yes: bool,
        cache_dir: str | None) -> int:
    interactive = can_ask(tty, stdin_tty)
    if not (dry_run or yes or interactive):
        raise UsageError("in a pipe lm-cache-rm deletes only with --yes (--dry-run shows what it would free)")
    if ids:
        targets, errors = targets_from_args(ids, revision), list[dict[str, Any]]()
    elif stdin_tty:
        raise UsageError("name the models to delete, or pipe lm-cache-ls records in")
    else:
        targets, errors = targets_from_records(list(read_items(sys.stdin.buffer)), revision)
    cache = scan(cache_dir)
    plans, plan_errors = build_plans(cache, targets)
    errors += plan_errors
    for e in errors:
        where = "" if ids or "line" not in e else f"line {e['line']}: "
        say(TOOL, f"error: {where}{e['error']}")
    if not plans:
        if not errors:
            say(TOOL, "nothing to delete")
        elif not tty:
            write(errors, failed=True)
        return EXIT_FAILED if errors else EXIT_OK
    if not dry_run and not yes:
        from ..terminal.tables import deletion_table, print_out

        print_out(deletion_table([p.record(True) for p in plans], dry_run=True))
        if not ask(f"Delete {len(plans)} model(s) from the cache?", stdin_tty):
            say(TOOL, "nothing deleted")
            return EXIT_OK
    records = []
    for p in plans:
        if not dry_run:
            execute(p, cache)
        records.append(p.record(dry_run))
    if tty:
        from ..terminal.tables import deletion_table, print_out

        print_out(deletion_table(records, dry_run))
    else:
        write(records)
        write(errors, failed=True)
    return EXIT_FAILED if errors else EXIT_OK


def write(records: list[dict[str, Any]], failed: bool = False) -> None:
    writer = RecordWriter(sys.stdout.buffer)
    for r in records:
        writer.write(r, failed)
