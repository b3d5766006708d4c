"""lm-tokenize's task: text to ids, tokens, offsets and flags, or ids back to text."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chat.chat_template import apply_chat_template
from ..chat.prompts import PromptSettings, messages_of, text_messages, text_of
from ..errors import RecordError, UsageError
from ..models.fast_tokenizer import load_any
from ..models.resolve import resolve
from ..records.jsonl import Item, error_record
from ..records.pipe import JsonlSink, PipeSettings, run_records, say
from ..records.runner import Finished
from ..terminal.display import TokenizeTtySink


@dataclass(frozen=True)
class TokenizeSettings:
    field: str = "text"
    decode: bool = False
    special: bool = True  # add the tokenizer's own special tokens (BOS, ...) when encoding
    out: str | None = None


def load(model: str | None, tokenizer_dir: str | None) -> Any:
    """The tokenizer from tokenizer.json (no torch, no transformers); transformers' slow one, said
    on stderr, only for a model without that file."""
    if tokenizer_dir:
        path = Path(tokenizer_dir)
        if not path.is_dir():
            raise UsageError(f"--tokenizer {tokenizer_dir}: no such folder")
        ref = resolve(str(path))
    else:
        ref = resolve(model)
    return load_any(ref, lambda message: say("lm-tokenize", message))


def add_tokens(tokenizer: Any, tokens: tuple[str, ...], special: tuple[str, ...]) -> None:
    if tokens:
        tokenizer.add_tokens(list(tokens))
    if special:
        tokenizer.add_special_tokens(list(special))


def encode(tokenizer: Any, text: str, special: bool) -> dict[str, Any]:
    enc = tokenizer.encode(text, add_special_tokens=special)
    ids = list(enc.ids)
    added = set(tokenizer.get_added_vocab().values())
    specials = set(tokenizer.all_special_ids)
    out: dict[str, Any] = {
        "ids": ids,
        "tokens": tokenizer.convert_ids_to_tokens(ids),
        "count": len(ids),
        "special": [i in specials for i in ids],
        "added": [i in added and i not in specials for i in ids],
    }
    if enc.offsets is not None:
        out["offsets"] = [list(o) for o in enc.offsets]
    return out


def chat_prompt(tokenizer: Any, record: dict[str, Any]) -> str:
    """A record's `messages` as the model's chat template renders them for generation (with jinja2,
    as transformers does: lmpipe.chat.chat_template)."""
    messages = text_messages(messages_of(record, PromptSettings()))
    return apply_chat_template(tokenizer, messages, add_generation_prompt=True)


def decode(tokenizer: Any, record: dict[str, Any]) -> str:
    ids = record.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise RecordError("--decode needs an `ids` field holding a list of integers")
    if any(i < 0 or i >= len(tokenizer) for i in ids):
        raise RecordError(f"token ids must be in [0, {len(tokenizer)})")
    return tokenizer.decode(ids)


class TokenizeTask:
    def __init__(self, tokenizer: Any, settings: TokenizeSettings):
        self.tokenizer = tokenizer
        self.settings = settings

    def encoded(self, record: dict[str, Any]) -> dict[str, Any]:
        """The token fields for a record's text, or for its `messages` (a chat without the text
        field) as lm-generate would prompt the model: the template's rendering, kept in `prompt`
        (the offsets point into it), tokenized without adding special tokens (the template wrote them)."""
        if "messages" in record and self.settings.field not in record:
            record["prompt"] = chat_prompt(self.tokenizer, record)
            return encode(self.tokenizer, record["prompt"], special=False)
        return encode(self.tokenizer, text_of(record, self.settings.field), self.settings.special)

    def process(self, batch: list[Item]) -> Iterator[Finished]:
        for item in batch:
            record = dict(item.record or {})
            try:
                if self.settings.decode:
                    record[self.settings.out or "text"] = decode(self.tokenizer, record)
                elif self.settings.out:
                    record[self.settings.out] = self.encoded(record)
                else:
                    record.update(self.encoded(record))
                yield Finished(item, record)
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)


@dataclass(frozen=True)
class TokenizeRun:
    """One lm-tokenize run: which tokenizer (with added tokens), what to do with each record."""

    settings: TokenizeSettings = field(default_factory=TokenizeSettings)
    model: str | None = None
    tokenizer: str | None = None  # a tokenizer folder instead of the model's
    add_tokens: tuple[str, ...] = ()
    add_special_tokens: tuple[str, ...] = ()
    save: str | None = None  # save the (modified) tokenizer to this folder
    pipe: PipeSettings = field(default_factory=PipeSettings)


def run(r: TokenizeRun, tty: bool, stdin_tty: bool) -> int:
    job = r.pipe.job.open()
    tty = tty and not job.to_file
    tok = load(r.model, r.tokenizer)
    add_tokens(tok, r.add_tokens, r.add_special_tokens)
    if r.save:
        tok.save(r.save)
        say("lm-tokenize", f"saved the tokenizer ({len(tok)} tokens) to {r.save}")
        if stdin_tty:
            return 0
    task = TokenizeTask(tok, r.settings)
    sink: Any = TokenizeTtySink() if tty else JsonlSink()
    return run_records("lm-tokenize", task.process, sink, batch_size=r.pipe.batch_size or 64,
                       progress=r.pipe.progress, job=job)
