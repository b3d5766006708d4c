"""Terminal tables: sizes people read, totals, and paths that give way on a narrow terminal."""

from __future__ import annotations

import io

from rich.console import Console

from lmpipe.terminal.tables import cache_table, deletion_table, human_size

RECORDS = [
    {"id": "org/big-model", "kind": "hub", "size_bytes": 2_500_000_000, "revisions": 2, "files": 9,
     "last_accessed": "2026-11-22T18:00:00Z", "path": "/home/me/.cache/huggingface/hub/models--org--big-model"},
    {"id": "small", "kind": "converted", "size_bytes": 1_500, "revisions": 1, "files": 3,
     "last_accessed": "2026-11-21T08:30:00Z", "path": "/home/me/.cache/lmpipe/models/small"},
]


def render(table, width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width)
    console.print(table)
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


def test_human_sizes_are_decimal():
    assert [human_size(n) for n in (0, 999, 1_500, 2_500_000_000)] == ["0 bytes", "999 bytes", "1.5 kB", "2.5 GB"]


def test_wide_terminal_shows_everything_and_the_total(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    lines = render(cache_table(RECORDS), 200)
    assert lines[1].split() == ["org/big-model", "hub", "2.5", "GB", "2", "9", "2026-11-22", "18:00",
                               RECORDS[0]["path"]]
    assert lines[-1].split() == ["2", "models", "2.5", "GB"]


def test_narrow_terminal_cuts_paths_from_the_left_then_drops_them(monkeypatch):
    monkeypatch.setenv("COLUMNS", "90")
    lines = render(cache_table(RECORDS), 90)
    assert all(len(line) <= 90 for line in lines)
    assert lines[1].endswith("models--org--big-model") and "…" in lines[1] and RECORDS[0]["path"] not in lines[1]
    monkeypatch.setenv("COLUMNS", "60")
    lines = render(cache_table(RECORDS), 60)
    assert "PATH" not in lines[0] and lines[1].split()[:5] == ["org/big-model", "hub", "2.5", "GB", "2"]


def test_deletion_totals():
    records = [{"id": "a/b", "kind": "hub", "whole": False, "revisions": ["0123456789abcdef"], "freed_bytes": 2_000},
               {"id": "c", "kind": "converted", "whole": True, "revisions": [], "freed_bytes": 3_000}]
    lines = render(deletion_table(records, dry_run=True), 100)
    assert lines[1].split() == ["a/b", "hub", "0123456789ab", "2.0", "kB"]
    assert lines[-1].split() == ["would", "free", "5.0", "kB"]
