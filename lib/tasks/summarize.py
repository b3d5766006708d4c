"""lm-summarize's task: a summary of each record's text, map-reduce when it is longer than the window.

Map: the text is packed into sentence-bounded chunks of at most the window, each summarized.
Reduce: the chunk summaries, joined, are summarized again (packed again if they still do not
fit) until one summary is left. The record says how many chunks the text took and how many
rounds. Chunks of all records in a batch go to the model together.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as default
from typing import Any

from ..backends.seq2seq import Seq2SeqGenerator, Seq2SeqSettings
from ..backends.text import ChatBackend, Output, Seq2SeqBackend, TextBackend, chat_task, check, combine, run_pieces
from ..chat.prompts import text_of
from ..errors import RecordError
from ..models.loading import LoadedModel, ModelSettings
from ..records.jsonl import Item, error_record
from ..records.manifest import manifest
from ..records.pipe import PipeSettings
from ..records.runner import Finished
from ..text.sentences import pack
from .text import run_task

CHAT_MAX_NEW_TOKENS = 256
INSTRUCTION = "Summarize the following text in a few sentences. Reply with the summary only.\n\n{text}"
MAX_ROUNDS = 8


@dataclass(frozen=True)
class SummarizeSettings:
    field: str = "text"
    out: str = "summary"
    generation: Seq2SeqSettings = default(default_factory=Seq2SeqSettings)
    window: int | None = None


def t5_prefix(config: Any) -> str:
    params = getattr(config, "task_specific_params", None) or {}
    return (params.get("summarization") or {}).get("prefix", "summarize: ")


@dataclass
class _Doc:
    """One record on its way through the rounds."""

    item: Item
    pieces: list[str]
    chunks: int
    tokens: int  # of the text this round summarizes
    rounds: int = 0
    outputs: list[Output] = default(default_factory=list)


class SummarizeTask:
    def __init__(self, lm: LoadedModel, settings: SummarizeSettings, batch_size: int = 8):
        self.lm, self.settings, self.batch_size = lm, settings, batch_size
        task_settings: dict[str, Any] = {"task": "summarize"}
        if not lm.is_encoder_decoder:
            generate = chat_task(lm, settings.generation.max_length or CHAT_MAX_NEW_TOKENS,
                                 settings.generation.num_beams, settings.generation.min_length)
            self.backend: TextBackend = ChatBackend(generate, lambda text: INSTRUCTION.replace("{text}", text),
                                                    settings.window)
            task_settings |= {"instruction": INSTRUCTION, "sampling": generate.settings.sampling.manifest()}
        else:
            prefix = t5_prefix(lm.model.config) if getattr(lm.model.config, "model_type", "") in ("t5", "mt5") else ""
            seq2seq = Seq2SeqGenerator(lm.model, lm.tokenizer, lm.device, settings.generation, prefix=prefix)
            self.backend = Seq2SeqBackend(seq2seq, settings.window)
            task_settings |= {"prefix": prefix, "generation": seq2seq.effective()}
        task_settings["window"] = self.backend.limit
        self.manifest = manifest(lm.identity, task_settings, lm.device, lm.dtype)

    def start(self, item: Item) -> _Doc:
        text = text_of(item.record or {}, self.settings.field)
        pieces = pack(text, self.backend.count, self.backend.limit)
        return _Doc(item, pieces, len(pieces), self.backend.count(text))

    def reduce(self, doc: _Doc, summaries: list[str]) -> None:
        """The next round's pieces: the joined summaries, packed again."""
        joined = "\n".join(s.strip() for s in summaries)
        tokens = self.backend.count(joined)
        doc.rounds += 1
        if tokens >= doc.tokens or doc.rounds >= MAX_ROUNDS:
            raise RecordError(
                f"map-reduce does not converge: the {len(summaries)} summaries take {tokens} tokens, the text they "
                f"summarize {doc.tokens}; lower --max-length (or raise --window)")
        doc.pieces, doc.tokens = pack(joined, self.backend.count, self.backend.limit), tokens

    def process(self, batch: list[Item]) -> Iterator[Finished]:
        docs: list[_Doc] = []
        for item in batch:
            try:
                docs.append(self.start(item))
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)
        while docs:
            outputs = run_pieces(self.backend, [p for d in docs for p in d.pieces], self.batch_size)
            still: list[_Doc] = []
            start = 0
            for doc in docs:
                mine, start = outputs[start:start + len(doc.pieces)], start + len(doc.pieces)
                doc.outputs.extend(mine)
                try:
                    check(mine)
                    if len(mine) == 1:
                        yield Finished(doc.item, self.output(doc, mine[0].text))
                        continue
                    self.reduce(doc, [o.text for o in mine])
                    still.append(doc)
                except RecordError as exc:
                    yield Finished(doc.item, error_record(doc.item, str(exc)), failed=True)
            docs = still

    def output(self, doc: _Doc, summary: str) -> dict[str, Any]:
        record = dict(doc.item.record or {})
        record[self.settings.out] = summary
        record["chunks"] = doc.chunks
        record["rounds"] = doc.rounds + 1
        record["stats"] = combine(doc.outputs)
        record["manifest"] = self.manifest
        return record


@dataclass(frozen=True)
class SummarizeRun:
    """One lm-summarize run: the summary, the model, the records."""

    settings: SummarizeSettings = default(default_factory=SummarizeSettings)
    model: ModelSettings = default(default_factory=ModelSettings)
    pipe: PipeSettings = default(default_factory=PipeSettings)


def run(r: SummarizeRun, tty: bool) -> int:
    """lm-summarize: the model first (fail fast), then stdin to stdout."""
    return run_task("lm-summarize", tty, r.model, r.pipe, r.settings.out,
                    lambda lm, batch: SummarizeTask(lm, r.settings, batch))
