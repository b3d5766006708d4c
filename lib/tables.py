"""Tables and panels for people on a terminal: cache listings, deletions, model facts.

Each takes the same records the tools write as JSONL, so what a person sees and what a
program reads cannot disagree. Sizes are decimal (kB, MB, GB), as the Hugging Face CLI shows them.
"""

from __future__ import annotations

from typing import Any, Iterable


def human_size(n: int | None) -> str:
    from rich.filesize import decimal

    return "" if n is None else decimal(int(n))


def _table(*columns: str, right: Iterable[str] = ()):
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False, show_footer=True)
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=name != "PATH",
                         overflow="fold" if name == "PATH" else "ellipsis")
    return table


def _day(iso: str) -> str:
    return iso.replace("T", " ").removesuffix("Z")[:16]


def cache_table(records: list[dict[str, Any]]):
    table = _table("ID", "KIND", "SIZE", "REVS", "FILES", "LAST ACCESSED", "PATH", right=("SIZE", "REVS", "FILES"))
    for r in records:
        table.add_row(r["id"], r["kind"], human_size(r["size_bytes"]), str(r["revisions"]), str(r["files"]),
                      _day(r["last_accessed"]), r["path"])
    total = sum(r["size_bytes"] for r in records)
    table.columns[0].footer = f"{len(records)} models"
    table.columns[2].footer = human_size(total)
    return table


def revision_table(records: list[dict[str, Any]]):
    table = _table("ID", "REVISION", "REFS", "SIZE", "FILES", "LAST MODIFIED", right=("SIZE", "FILES"))
    for r in records:
        table.add_row(r["id"], r["revision"], ", ".join(r["refs"]), human_size(r["size_bytes"]), str(r["files"]),
                      _day(r["last_modified"]))
    table.columns[0].footer = f"{len(records)} revisions"
    return table


def deletion_table(records: list[dict[str, Any]], dry_run: bool):
    table = _table("ID", "KIND", "WHAT", "FREES", right=("FREES",))
    for r in records:
        what = "whole model" if r["whole"] else ", ".join(h[:12] for h in r["revisions"])
        table.add_row(r["id"], r["kind"], what, human_size(r["freed_bytes"]))
    table.columns[2].footer = "would free" if dry_run else "freed"
    table.columns[3].footer = human_size(sum(r["freed_bytes"] for r in records))
    return table


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
    import sys

    from rich.console import Console

    Console(file=sys.stdout, highlight=False).print(renderable)
