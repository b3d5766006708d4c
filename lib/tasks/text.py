"""What lm-translate and lm-summarize share at the edge: load, build the task, pick a sink, run."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..models.loading import load
from ..records.pipe import JsonlSink, batch_size_for, run_records
from ..terminal.display import RecordTtySink, stats_line

if TYPE_CHECKING:
    from ..models.loading import ModelSettings
    from ..records.pipe import PipeSettings


class TextTtySink(RecordTtySink):
    """On a terminal: each record's result as text, a dim stats line on stderr."""

    def __init__(self, field: str):
        super().__init__()
        self.field = field

    def show(self, record: dict[str, Any]) -> None:
        self.out.print(record.get(self.field, ""), markup=False)
        chunks = record.get("chunks", 1)
        extra = f" · {chunks} chunks" if chunks > 1 else ""
        self.err.print(f"[dim]{stats_line(record['stats'])}{extra}[/]")


def run_task(tool: str, tty: bool, model: ModelSettings, pipe: PipeSettings, out: str,
             build: Callable[[Any, int], Any]) -> int:
    """Load the model (an unknown one fails before stdin is read), build the task, run stdin through it."""
    # Marian's tokenizer asks for sacremoses on every load; lmpipe does not use its normalizer.
    warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")

    job = pipe.job.open()  # --output FILE is checked before the model loads
    tty = tty and not job.to_file
    batch_size = batch_size_for(pipe.batch_size, tty)
    task = build(load(model), batch_size)
    sink: Any = TextTtySink(out) if tty else JsonlSink()
    return run_records(tool, task.process, sink, batch_size, pipe.progress, job=job)
