"""What people see on a terminal: streamed text, token boxes, stats lines. Never used in a pipe."""

from __future__ import annotations

import sys
import time
from typing import Any

from ..records.jsonl import Item, failure_text


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(file=sys.stderr if stderr else sys.stdout, highlight=False, soft_wrap=True)


def show_failure(console, record: dict[str, Any]) -> None:
    """A failed record on a terminal: one red line on stderr."""
    from rich.text import Text

    console.print(Text(failure_text(record), style="red"))


def probability_style(p: float | None) -> str:
    """Green for likely tokens through yellow to red for unlikely ones."""
    if p is None:
        return "reverse"
    if p >= 0.8:
        return "black on green"
    if p >= 0.5:
        return "black on yellow"
    if p >= 0.2:
        return "black on dark_orange"
    return "white on red"


def token_box(text: str, style: str):
    from rich.text import Text

    shown = text.replace("\n", "↵\n").replace(" ", "·") or "∅"
    return Text(shown, style=style)


def stats_line(stats: dict[str, Any]) -> str:
    parts = [
        f"{stats['input_tokens']} in",
        f"{stats['output_tokens']} out",
        f"ttft {stats['ttft_s'] * 1000:.0f} ms",
        f"{stats['tokens_per_s']:.1f} tok/s",
        f"{stats['total_s']:.2f} s",
        stats["finish_reason"],
    ]
    if stats.get("ttnt_s") is not None:
        parts.insert(3, f"t{stats['ttnt']} {stats['ttnt_s'] * 1000:.0f} ms")
    return " · ".join(parts)


class GenerateTtySink:
    """lm-generate on a terminal: text streams as it comes, a stats line follows on stderr."""

    def __init__(self, quiet: bool = False, boxes: bool = False, pause_ms: int = 0, out: str = "generated"):
        self.out, self.err = _console(), _console(stderr=True)
        self.quiet, self.boxes, self.pause = quiet, boxes, pause_ms / 1000
        self.field = out
        self.failed = 0

    def streamed(self, item: Item, event: Any) -> None:
        if self.boxes:
            self.out.print(token_box(event.text, probability_style(event.p)), end="")
            if self.pause:
                time.sleep(self.pause)
        else:
            self.out.print(event.text, end="", markup=False)
        self.out.file.flush()

    def finished(self, record: dict[str, Any], failed: bool) -> None:
        if failed:
            show_failure(self.err, record)
            return
        self.out.print()
        if not self.quiet and "stats" in record:
            if record.get("reasoning"):
                self.err.print(f"[dim]reasoning: {record['reasoning']}[/]", markup=True)
            self.err.print(f"[dim]{stats_line(record['stats'])}[/]")


TOKEN_STYLES = ("black on cyan", "black on bright_green", "black on yellow", "black on bright_blue")


def token_boxes(encoding: dict[str, Any], separator: str = ""):
    """lm-tokenize's fields as colored boxes: special tokens red, added ones magenta, the rest alternating."""
    from rich.text import Text

    line = Text()
    text = encoding.get("text", "")
    for i, token in enumerate(encoding["tokens"]):
        if encoding["special"][i]:
            style = "bold white on red"
        elif encoding["added"][i]:
            style = "bold white on magenta"
        else:
            style = TOKEN_STYLES[i % len(TOKEN_STYLES)]
        piece = text[slice(*encoding["offsets"][i])] if "offsets" in encoding and text else token
        line.append_text(token_box(piece or token, style))
        line.append(separator)
    return line


class RecordTtySink:
    """A terminal sink that shows each finished record whole (nothing streams); a failed one is a
    line on stderr. Subclasses say how a record looks in `show`."""

    def __init__(self):
        self.out, self.err = _console(), _console(stderr=True)

    def streamed(self, item: Item, event: Any) -> None:
        pass

    def finished(self, record: dict[str, Any], failed: bool) -> None:
        if failed:
            show_failure(self.err, record)
        else:
            self.show(record)

    def show(self, record: dict[str, Any]) -> None:
        raise NotImplementedError


class TokenizeTtySink(RecordTtySink):
    """lm-tokenize on a terminal: each token a colored box, special and added tokens apart."""

    def show(self, record: dict[str, Any]) -> None:
        if "ids" not in record or "tokens" not in record:
            self.out.print(record.get("text", ""), markup=False)
            return
        self.out.print(token_boxes(record))
        n_special, n_added = sum(record["special"]), sum(record["added"])
        self.err.print(f"[dim]{record['count']} tokens · {n_special} special · {n_added} added[/]")


class DetectTtySink(RecordTtySink):
    """lm-detect on a terminal: a table of detections per image."""

    def show(self, record: dict[str, Any]) -> None:
        from rich.table import Table

        name = record.get("image") or record.get("text") or "image_b64"
        title = f"{name} · {record['width']}×{record['height']} · {len(record['detections'])} found"
        table = Table(title=title, title_justify="left", show_edge=False)
        for column, justify in (("label", "left"), ("score", "right"), ("xmin", "right"), ("ymin", "right"),
                                ("xmax", "right"), ("ymax", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for d in record["detections"]:
            b = d["box"]
            table.add_row(d["label"], f"{d['score']:.3f}", *(str(b[k]) for k in ("xmin", "ymin", "xmax", "ymax")))
        self.out.print(table)
        if record.get("annotated"):
            self.err.print(f"[dim]annotated: {record['annotated']}[/]", markup=True)
