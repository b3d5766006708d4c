"""lm-model-info: what a model is, for each model named as an argument or in stdin's records."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable
from typing import Any

from ..errors import LmpipeError, RecordError
from ..models.modelinfo import model_info
from ..models.resolve import DEFAULT_MODEL
from ..records.jsonl import Item, error_record, read_items
from ..records.pipe import JsonlSink, each_name, finish
from ..records.runner import Finished
from ..records.runner import run as run_items
from ..terminal.display import show_failure
from ..terminal.tables import model_panel, print_out

TOOL = "lm-model-info"


def model_of(record: dict[str, Any]) -> str:
    """The model a record names: `model`, else an lm-cache-ls record's id (or path, for converted models)."""
    if record.get("model"):
        return str(record["model"])
    if record.get("kind") == "converted" and record.get("path"):
        return str(record["path"])
    name = record.get("id") or record.get("text")
    if not name:
        raise RecordError("the record names no model (no `model`, `id` or `text` field)")
    return str(name)


class ModelInfoTtySink:
    def __init__(self):
        from rich.console import Console

        self.err = Console(file=sys.stderr, highlight=False)

    def finished(self, record: dict[str, Any], failed: bool) -> None:
        if failed:
            show_failure(self.err, record)
        else:
            print_out(model_panel(record))

    def streamed(self, item: Item, event: Any) -> None:
        pass


def run(tty: bool, stdin_tty: bool, models: tuple[str, ...], load: bool, device: str, dtype: str,
        json_out: bool) -> int:
    sink = ModelInfoTtySink() if tty and not json_out else JsonlSink()

    def one(name: str) -> dict[str, Any]:
        return model_info(name, load, device, dtype)

    items = iter(()) if models or stdin_tty else read_items(sys.stdin.buffer)
    first = next(items, None)
    if first is None:  # names as arguments; none at all (nor records) means the default model
        return each_name(TOOL, models or (DEFAULT_MODEL,), one, lambda record: sink.finished(record, False))

    def process(batch: list[Item]) -> Iterable[Finished]:
        for item in batch:
            record = item.record
            assert record is not None  # run_items hands over only the lines that were records
            try:
                yield Finished(item, {**record, **one(model_of(record))})
            except LmpipeError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)

    return finish(TOOL, run_items(itertools.chain([first], items), process, sink, batch_size=1))
