"""lm-stats: per-model counts, errors and percentiles, as JSON in a pipe and a table on a terminal."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.filters.stats import main
from lmpipe.records.jsonl import Item
from lmpipe.tasks.stats import collect, percentile, table


def record(model, ttft, rate, total):
    return {"text": "x", "stats": {"ttft_s": ttft, "tokens_per_s": rate, "total_s": total, "input_tokens": 1,
                                   "output_tokens": 2, "finish_reason": "eos"}, "manifest": {"model": model}}


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(8.8)
    assert percentile([5.0], 95) == 5.0


def test_pipe_gives_one_json_object_per_model():
    lines = [orjson.dumps(record("a", t / 10, 100 - t, t)).decode() for t in range(1, 11)]
    lines += [orjson.dumps(record("b", 0.5, 20.0, 2.0)).decode(), '{"text": "y", "error": "boom", "line": 12}',
              "{not json", orjson.dumps({**record("b", 0.1, 1, 1), "error": "failed"}).decode()]
    result = CliRunner().invoke(main, [], input="\n".join(lines) + "\n", catch_exceptions=False)
    assert result.exit_code == 0
    [report] = jsonl(result.stdout_bytes)
    assert (report["records"], report["errors"]) == (14, 3)
    a, b, none = report["models"]
    assert (a["model"], a["count"], a["errors"]) == ("a", 10, 0)
    assert a["ttft_s"] == {"n": 10, "p50": 0.55, "p95": 0.955, "max": 1.0}
    assert a["tokens_per_s"]["p50"] == 94.5 and a["total_s"]["max"] == 10
    assert (b["count"], b["errors"], b["ttft_s"]["n"]) == (2, 1, 1)
    assert none == {"model": None, "count": 2, "errors": 2, "ttft_s": {"n": 0, "p50": None, "p95": None, "max": None},
                    "tokens_per_s": {"n": 0, "p50": None, "p95": None, "max": None},
                    "total_s": {"n": 0, "p50": None, "p95": None, "max": None}}


def test_terminal_table():
    from rich.console import Console

    report = collect([Item(1, record("HuggingFaceTB/SmolLM2-135M-Instruct", 0.25, 40.0, 1.5))])
    console = Console(width=100, record=True)
    console.print(table(report))
    text = console.export_text()
    assert "1 records, 0 errors" in text and "SmolLM2" in text
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    assert rows == [["HuggingFaceTB/SmolLM2-135M-Instruct", "1", "0", "ttft ms", "250", "250", "250"],
                    ["", "", "", "tok/s", "40.0", "40.0", "40.0"],
                    ["", "", "", "total s", "1.50", "1.50", "1.50"]], text


def test_group_by_another_field():
    lines = [orjson.dumps({**record("a", 0.1, 10, 1), "manifest": {"model": "a", "device": d}}).decode()
             for d in ("cpu", "cpu", "cuda")]
    result = CliRunner().invoke(main, ["--by", "manifest.device"], input="\n".join(lines) + "\n")
    [report] = jsonl(result.stdout_bytes)
    assert [(g["model"], g["count"]) for g in report["models"]] == [("cpu", 2), ("cuda", 1)]
