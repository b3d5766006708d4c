"""Tables and panels for people on a terminal: cache listings, deletions, model facts.

Each takes the same records the tools write as JSONL, so what a person sees and what a
program reads cannot disagree. Sizes are decimal (kB, MB, GB), as the Hugging Face CLI shows them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def human_size(n: int | None) -> str:
    from rich.filesize import decimal

    return "" if n is None else decimal(int(n))


def _table(columns: list[str], rows: list[list[str]], footers: dict[int, str], right: Iterable[str] = ()):
    """A table that fits the terminal: a PATH column, if any, gives way, cut from the left (--json has it whole)."""
    from rich.console import Console
    from rich.table import Table

    widths = [max([len(name), len(footers.get(i, ""))] + [len(row[i]) for row in rows])
              for i, name in enumerate(columns)]
    if "PATH" in columns:
        at = columns.index("PATH")
        room = Console().width - sum(w for i, w in enumerate(widths) if i != at) - 2 * (len(columns) - 1)
        if room < 16:  # no room worth showing: leave the column out
            columns, widths = columns[:at] + columns[at + 1:], widths[:at] + widths[at + 1:]
            rows = [row[:at] + row[at + 1:] for row in rows]
        else:
            rows = [[_cut_left(cell, room) if i == at else cell for i, cell in enumerate(row)] for row in rows]
    table = Table(box=None, header_style="bold", pad_edge=False, show_footer=bool(footers))
    for i, name in enumerate(columns):
        table.add_column(name, footer=footers.get(i, ""), justify="right" if name in right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _cut_left(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def _day(iso: str) -> str:
    return iso.replace("T", " ").removesuffix("Z")[:16]


def cache_table(records: list[dict[str, Any]]):
    rows = [[r["id"], r["kind"], human_size(r["size_bytes"]), str(r["revisions"]), str(r["files"]),
             _day(r["last_accessed"]), r["path"]] for r in records]
    footers = {0: f"{len(records)} models", 2: human_size(sum(r["size_bytes"] for r in records))}
    return _table(["ID", "KIND", "SIZE", "REVS", "FILES", "LAST ACCESSED", "PATH"], rows, footers,
                  right=("SIZE", "REVS", "FILES"))


def revision_table(records: list[dict[str, Any]]):
    rows = [[r["id"], r["revision"], ", ".join(r["refs"]), human_size(r["size_bytes"]), str(r["files"]),
             _day(r["last_modified"])] for r in records]
    return _table(["ID", "REVISION", "REFS", "SIZE", "FILES", "LAST MODIFIED"], rows,
                  {0: f"{len(records)} revisions"}, right=("SIZE", "FILES"))


def deletion_table(records: list[dict[str, Any]], dry_run: bool):
    rows = [[r["id"], r["kind"], "whole model" if r["whole"] else ", ".join(h[:12] for h in r["revisions"]),
             human_size(r["freed_bytes"])] for r in records]
    footers = {2: "would free" if dry_run else "freed", 3: human_size(sum(r["freed_bytes"] for r in records))}
    return _table(["ID", "KIND", "WHAT", "FREES"], rows, footers, right=("FREES",))


def model_panel(record: dict[str, Any]):
    from rich.panel import Panel
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")

    def row(label: str, value: Any) -> None:
        if value is not None and value != "":
            grid.add_row(label, str(value))

    params = record.get("parameters")
    row("architecture", record.get("architecture"))
    row("parameters", None if params is None else f"{params:,} ({record.get('parameters_from')})")
    row("layers", record.get("layers"))
    row("heads", f"{record.get('heads')} (KV heads {record.get('kv_heads')})")
    row("hidden size", record.get("hidden_size"))
    row("vocabulary", None if record.get("vocab_size") is None else f"{record['vocab_size']:,}")
    row("context", None if record.get("context_length") is None else f"{record['context_length']:,} tokens")
    row("dtype", record.get("dtype"))
    row("chat template", "yes" if record.get("chat_template") else "no")
    row("special tokens", "  ".join(f"{k}={v}" for k, v in record.get("special_tokens", {}).items()))
    row("size on disk", human_size(record.get("size_bytes")))
    if "converted_size_bytes" in record:
        row("converted", f"{human_size(record['converted_size_bytes'])} in {record['converted_path']}")
    row("path", record.get("path"))
    return Panel(grid, title=f"{record['id']} [dim]({record['kind']})[/]", expand=False)


def print_out(renderable: Any) -> None:
    """Print to stdout for a person."""
    from rich.console import Console

    Console(file=sys.stdout, highlight=False).print(renderable)
