"""lm-stats: count, errors and p50/p95/max of ttft, tokens/s and total time, per model, from any lmpipe output.

Records are grouped by `manifest.model`; a record without a manifest (most error records: they
pass their input through) counts under model null. `--by` groups by another field instead. Percentiles interpolate
linearly between
the two nearest values, as numpy's default does.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from ..records.jsonl import Item, read_items

METRICS = ("ttft_s", "tokens_per_s", "total_s")


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0-100) of values, linear between closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    return {"n": len(values), "p50": round(percentile(values, 50), 6), "p95": round(percentile(values, 95), 6),
            "max": round(max(values), 6)}


@dataclass
class _Group:
    count: int = 0
    errors: int = 0
    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})


def lookup(record: dict[str, Any], path: str) -> str | None:
    """The value at a dotted path (manifest.model), as a string; None when it is not there."""
    value: Any = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def collect(items: Iterable[Item], by: str = "manifest.model") -> dict[str, Any]:
    groups: dict[str | None, _Group] = {}
    total = errors = 0
    for item in items:
        total += 1
        record = item.record or {}
        group = groups.setdefault(lookup(record, by), _Group())
        group.count += 1
        if item.error is not None or "error" in record:
            group.errors += 1
            errors += 1
            continue
        stats = record.get("stats")
        if isinstance(stats, dict):
            for m in METRICS:
                value = stats.get(m)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    group.values[m].append(float(value))
    models = [
        {"model": name, "count": g.count, "errors": g.errors, **{m: summary(g.values[m]) for m in METRICS}}
        for name, g in sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
    ]
    return {"records": total, "errors": errors, "models": models}


def table(report: dict[str, Any]):
    """Three rows per model (ttft, tokens/s, total), one column per percentile."""
    from rich.table import Table

    t = Table(title=f"{report['records']} records, {report['errors']} errors", title_justify="left")
    t.add_column("model", overflow="fold", ratio=1)
    for name in ("count", "errors", "metric", "p50", "p95", "max"):
        t.add_column(name, justify="right", no_wrap=True)
    shown = (("ttft_s", "ttft ms", 1000, ".0f"), ("tokens_per_s", "tok/s", 1, ".1f"), ("total_s", "total s", 1, ".2f"))
    for g in report["models"]:
        for i, (key, label, scale, fmt) in enumerate(shown):
            s = g[key]
            values = [format(s[k] * scale, fmt) if s["n"] else "–" for k in ("p50", "p95", "max")]
            head = [g["model"] or "(no manifest)", str(g["count"]), str(g["errors"])] if i == 0 else ["", "", ""]
            t.add_row(*head, label, *values, end_section=i == len(shown) - 1)
    return t


def run(tty: bool, source: IO[bytes], by: str = "manifest.model", as_json: bool = False) -> int:
    import orjson

    report = collect(read_items(source), by)
    if tty and not as_json:
        from rich.console import Console

        Console().print(table(report))
    else:
        sys.stdout.buffer.write(orjson.dumps(report) + b"\n")
        sys.stdout.buffer.flush()
    return 0
