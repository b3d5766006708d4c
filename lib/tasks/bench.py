"""lm-bench's task: the measurements asked for, out as JSONL or as a table."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import UsageError
from ..records.jsonl import RecordWriter
from ..records.pipe import say
from .bench_cases import BenchSettings, llama_cpp_context, pipeline_seconds, run_bench, server_ttft
from .bench_loads import load_records


@dataclass(frozen=True)
class BenchRun:
    """One lm-bench run: the generation cases, and which other timings to take."""

    settings: BenchSettings = field(default_factory=BenchSettings)
    skip_generate: bool = False
    cold: bool = False  # whole processes, beside Python's own start-up (lmpipe.tasks.bench_cold)
    loads: bool = False  # the model's first and second load, each a fresh process (lmpipe.tasks.bench_loads)
    server: str | None = None  # the first token through this server
    pipeline: int | None = None  # a three-stage pipeline of this many records
    # the server's throughput with this many chats at a time (lmpipe.tasks.bench_load)
    concurrency: tuple[int, ...] = ()
    # NAME[:TYPE]: a random-weight GGUF of a real shape as the model (lmpipe.models.synthetic)
    synthetic: str | None = None

    def __post_init__(self) -> None:
        if self.concurrency and not self.server:
            raise UsageError("--concurrency measures a running server: give its --server URL")


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "median" in value:
        return f"{value['median']:g} (min {value['min']:g})"
    return "" if value is None else str(value)


def table(records: list[dict[str, Any]]) -> None:
    """The measurements as people read them, on stderr-free stdout (a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rows = [r for r in records if r.get("case") == "generate"]
    if rows:
        t = Table(title="lm-bench: medians (min) over repetitions")
        for name in ("impl", "batch", "pp tok/s", "ttft s", "decode tok/s", "aggregate tok/s"):
            t.add_column(name, justify="left" if name == "impl" else "right")
        for r in rows:
            t.add_row(r["impl"], str(r["batch"]), _cell(r["pp_tok_s"]), _cell(r["ttft_s"]),
                      _cell(r["decode_tok_s"]), _cell(r["aggregate_tok_s"]))
        console.print(t)
    for r in records:
        if r.get("case") not in ("generate",):
            shown = {k: v for k, v in r.items() if k not in ("manifest", "case", "impl")}
            cells = ", ".join(f"{k} {_cell(v)}" for k, v in shown.items())
            console.print(f"[bold]{r['case']}[/bold] ({r['impl']}): " + cells)


def run(r: BenchRun, tty: bool) -> int:
    settings = r.settings
    if r.synthetic:
        from ..models.synthetic import ensure_synthetic

        path = ensure_synthetic(r.synthetic, lambda m: say("lm-bench", m))
        settings = replace(settings, model=replace(settings.model, model=str(path)))
    settings.model.ref()  # an unknown model fails before anything is loaded
    records: list[dict[str, Any]] = []
    writer = None if tty else RecordWriter(sys.stdout.buffer)

    def emit(record: dict[str, Any]) -> None:
        records.append(record)
        if writer is not None:
            writer.write(record)

    if not r.skip_generate:
        for record in run_bench(settings, lambda m: say("lm-bench", m)):
            emit(record)
    if r.loads:
        say("lm-bench", "timing the model's first load into an empty cache and its second, each a fresh process")
        baseline = llama_cpp_context(settings) if settings.baseline == "llama-cpp" else None
        for record in load_records(settings.model, baseline):
            emit(record)
    if r.cold:
        from .bench_cold import cold_commands, cold_records

        commands = cold_commands(settings.model.model, r.server)
        say("lm-bench", f"timing {len(commands)} cold processes side by side")
        for record in cold_records(commands, settings.repetitions):
            emit(record)
    if r.server:
        say("lm-bench", f"timing the first token through {r.server}")
        emit(server_ttft(r.server, settings.repetitions))
        for concurrency in r.concurrency:
            from .bench_load import server_load

            say("lm-bench", f"{2 * concurrency} chats through {r.server}, {concurrency} at a time")
            emit(server_load(r.server, concurrency, settings.gen_tokens, settings.model.model or "smollm2"))
    if r.pipeline:
        say("lm-bench", f"timing a three-stage pipeline of {r.pipeline} records")
        emit(pipeline_seconds(r.pipeline, None, settings.model.model))
        if r.server:
            from .bench_cold import found_warm

            found = found_warm(settings.model.model, r.server)
            emit(pipeline_seconds(r.pipeline, r.server, settings.model.model, found))
    if tty:
        table(records)
    return 0
