"""lm-cache-ls: one record per cached model (or per revision with --model), largest first."""

from __future__ import annotations

import sys
from typing import Any

from ..models.cache import scan
from ..records.jsonl import RecordWriter
from ..records.pipe import EXIT_FAILED, EXIT_OK, say

TOOL = "lm-cache-ls"


def listing(models: tuple[str, ...], cache_dir: str | None) -> tuple[list[dict[str, Any]], list[str]]:
    """The records to write, and the --model ids that are not in the cache."""
    cache = scan(cache_dir)
    for warning in cache.warnings:
        say(TOOL, f"warning: {warning}")
    if not models:
        return [e.record() for e in cache.entries], []
    records, missing = [], []
    for model in models:
        entries = cache.find(model)
        if not entries:
            missing.append(model)
        for entry in entries:
            records += entry.revision_records()
    return records, missing


def run(tty: bool, model: tuple[str, ...], cache_dir: str | None, json_out: bool) -> int:
    records, missing = listing(model, cache_dir)
    if tty and not json_out:
        from ..terminal.tables import cache_table, print_out, revision_table

        if records:
            print_out(revision_table(records) if model else cache_table(records))
        elif not missing:
            say(TOOL, "the caches hold no models")
    else:
        writer = RecordWriter(sys.stdout.buffer)
        for record in records:
            writer.write(record)
    for m in missing:
        say(TOOL, f"{m} is not in the cache")
    return EXIT_FAILED if missing else EXIT_OK
