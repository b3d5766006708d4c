"""One interface over the two ways lmpipe turns a text into another text with a model.

A seq2seq model (lmpipe.backends.seq2seq) takes the text as it is; a chat model takes it inside an
instruction and runs through lm-generate's own GenerateTask and generation loop. Both give
`Output`s with the same `stats` shape, both say how many tokens a text costs (`count`) and how
many fit (`limit`), so translation and summarization split and batch the same way for either.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..chat.prompts import prompt_ids
from ..engine.sampling import Sampling
from ..engine.timing import combined_rate
from ..errors import RecordError, UsageError
from ..records.jsonl import Item
from ..records.runner import Finished
from .generate import GenerateSettings, GenerateTask, stats


@dataclass(frozen=True)
class Output:
    """What the model gave for one piece of text: the text and its stats, or why it failed."""

    text: str = ""
    stats: dict[str, Any] | None = None
    error: str | None = None
    call: int = 0  # which model call produced it; pieces of one call share its clock


class TextBackend(Protocol):
    limit: int  # most tokens `count` may give for one piece

    def count(self, text: str) -> int: ...

    def run(self, texts: Sequence[str]) -> list[Output]: ...


class Seq2SeqBackend:
    """lmpipe.backends.seq2seq.Seq2SeqGenerator as a TextBackend."""

    def __init__(self, generator: Any, limit: int | None = None):
        self.generator = generator
        self.limit = min(limit, generator.window) if limit else generator.window
        if generator.count("") >= self.limit:
            raise UsageError(f"a window of {self.limit} tokens leaves no room for text after the model's prefix")

    def count(self, text: str) -> int:
        return self.generator.count(text)

    def run(self, texts: Sequence[str]) -> list[Output]:
        return [Output(c.text, stats(c, None)) for c in self.generator.run(texts)]


class ChatBackend:
    """A chat (or plain causal) model told what to do by an instruction around each text."""

    OVERHEAD = 8  # tokens of slack for chat-template markup around the instruction

    def __init__(self, task: Any, instruction: Callable[[str], str], limit: int | None = None):
        self.task = task  # a lmpipe.backends.generate.GenerateTask
        self.instruction = instruction
        context = task.preparation.context or 2048
        room = context - task.settings.sampling.max_new_tokens - self.OVERHEAD
        if room < 16:
            raise UsageError(f"--max-length {task.settings.sampling.max_new_tokens} leaves no room in the "
                             f"model's context of {context} tokens")
        self.limit = min(limit, room) if limit else room
        if self.count("") >= self.limit:
            raise UsageError(f"a window of {self.limit} tokens leaves no room for text after the instruction")

    def _item(self, line: int, text: str) -> Item:
        return Item(line, {self.task.settings.prompt.field: self.instruction(text)})

    def count(self, text: str) -> int:
        item = self._item(0, text)
        return len(prompt_ids(item.record or {}, self.task.lm.tokenizer, self.task.settings.prompt))

    def run(self, texts: Sequence[str]) -> list[Output]:
        got: dict[int, Output] = {}
        for out in self.task.process([self._item(i + 1, t) for i, t in enumerate(texts)]):
            if not isinstance(out, Finished):
                continue  # token events: nobody streams a piece of a record
            if out.failed:
                got[out.item.line] = Output(error=str(out.record.get("error")))
            else:
                got[out.item.line] = Output(out.record[self.task.settings.out], out.record["stats"])
        return [got.get(i + 1, Output(error="no output")) for i in range(len(texts))]


_calls = itertools.count()  # numbers every model call in the process, so rounds never share one


def run_pieces(backend: TextBackend, pieces: Sequence[str], batch_size: int) -> list[Output]:
    """Every piece through the backend, `batch_size` at a time, in order; a failed call fails its pieces."""
    outputs: list[Output] = []
    for start in range(0, len(pieces), max(1, batch_size)):
        call = next(_calls)
        batch = pieces[start:start + batch_size]
        try:
            got = backend.run(batch)
        except (RuntimeError, ValueError, IndexError) as exc:  # out of memory, a model bug
            got = [Output(error=f"generation failed: {exc}")] * len(batch)
        outputs.extend(Output(o.text, o.stats, o.error, call) for o in got)
    return outputs


def check(outputs: Sequence[Output]) -> None:
    """Raise the first failure among a record's pieces, so the record becomes an error record."""
    for o in outputs:
        if o.error is not None:
            raise RecordError(o.error)


def combine(outputs: Sequence[Output]) -> dict[str, Any]:
    """One `stats` for a record made of several pieces (and rounds): tokens add up, time adds up per
    model call, the first token is the first call's, and the rate is decode tokens over decode time."""
    stats = [o.stats for o in outputs if o.stats]
    if len(stats) == 1:
        return dict(stats[0])
    by_call: dict[int, list[dict[str, Any]]] = {}
    for o in outputs:
        by_call.setdefault(o.call, []).append(o.stats or {})
    total = sum(max(s["total_s"] for s in group) for group in by_call.values())
    reasons = [s["finish_reason"] for s in stats]
    return {
        "input_tokens": sum(s["input_tokens"] for s in stats),
        "output_tokens": sum(s["output_tokens"] for s in stats),
        "ttft_s": stats[0]["ttft_s"],
        "tokens_per_s": combined_rate([(s["output_tokens"], s["ttft_s"], s["total_s"]) for s in stats]),
        "total_s": round(total, 6),
        "finish_reason": "length" if "length" in reasons else reasons[-1],
    }


def chat_task(lm: Any, max_new_tokens: int, num_beams: int | None = None, min_length: int | None = None) -> Any:
    """lm-generate's task, greedy, for a chat model that works by instruction."""
    if num_beams and num_beams > 1:
        raise UsageError("--num-beams needs a seq2seq model; chat models decode greedily here")
    if min_length:
        raise UsageError("--min-length needs a seq2seq model")
    return GenerateTask(lm, GenerateSettings(sampling=Sampling(max_new_tokens=max_new_tokens, seed=0)))
