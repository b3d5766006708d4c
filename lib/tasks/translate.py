"""lm-translate's task: each record's text in another language, whole, with stats and manifest.

A text longer than the model's window is packed into sentence-bounded pieces, every piece is
translated (pieces of all records in a batch go to the model together), and the translations
are joined in order with the whitespace that separated the source pieces. Nothing is cut.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as default

from ..backends.seq2seq import Seq2SeqGenerator, Seq2SeqSettings
from ..backends.text import ChatBackend, Seq2SeqBackend, TextBackend, chat_task, check, combine, run_pieces
from ..chat.prompts import text_of
from ..errors import RecordError
from ..models.loading import LoadedModel, ModelSettings
from ..records.jsonl import Item, error_record
from ..records.manifest import manifest
from ..records.pipe import PipeSettings
from ..records.runner import Finished
from ..text.languages import Languages, family_of, name_of, resolve
from ..text.sentences import pack
from .text import run_task

CHAT_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class TranslateSettings:
    source: str | None = None
    target: str | None = None
    field: str = "text"
    out: str = "translation"
    generation: Seq2SeqSettings = default(default_factory=Seq2SeqSettings)
    window: int | None = None  # most input tokens per model call (default: the model's)


def instruction(languages: Languages) -> str:
    source = f" from {name_of(languages.source)}" if languages.source else ""
    return (f"Translate the following text{source} to {name_of(languages.target or '')}. "
            "Reply with the translation only.\n\n{text}")


def join(pieces: list[str], translations: list[str]) -> str:
    """Translations in order, each followed by the whitespace that followed its source piece."""
    if len(pieces) == 1:
        return translations[0]
    last = len(pieces) - 1
    parts = []
    for i, (piece, text) in enumerate(zip(pieces, translations, strict=True)):
        gap = piece[len(piece.rstrip()):] if i < last else ""
        parts.append(text.strip() + gap)
    return "".join(parts)


class TranslateTask:
    def __init__(self, lm: LoadedModel, settings: TranslateSettings, batch_size: int = 8):
        self.lm, self.settings, self.batch_size = lm, settings, batch_size
        model_type = getattr(lm.model.config, "model_type", "")
        family = family_of(model_type, lm.is_encoder_decoder, lm.tokenizer)
        specific = getattr(lm.model.config, "task_specific_params", None) or {}
        prefixes = {k: v.get("prefix", "") for k, v in specific.items()
                    if isinstance(v, dict)}
        self.languages = resolve(family, lm.tokenizer, lm.ref.id, settings.source, settings.target, prefixes)
        task_settings = {"task": "translate", **self.languages.manifest()}
        if family == "chat":
            template = instruction(self.languages)
            generate = chat_task(lm, settings.generation.max_length or CHAT_MAX_NEW_TOKENS,
                                 settings.generation.num_beams)
            self.backend: TextBackend = ChatBackend(generate, lambda text: template.replace("{text}", text),
                                                    settings.window)
            task_settings |= {"instruction": template, "sampling": generate.settings.sampling.manifest()}
        else:
            seq2seq = Seq2SeqGenerator(lm.model, lm.tokenizer, lm.device, settings.generation, self.languages)
            self.backend = Seq2SeqBackend(seq2seq, settings.window)
            task_settings |= {"generation": seq2seq.effective()}
        task_settings["window"] = self.backend.limit
        self.manifest = manifest(lm.identity, task_settings, lm.device, lm.dtype)

    def process(self, batch: list[Item]) -> Iterator[Finished]:
        ready: list[tuple[Item, list[str]]] = []
        for item in batch:
            try:
                text = text_of(item.record or {}, self.settings.field)
                ready.append((item, pack(text, self.backend.count, self.backend.limit)))
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)
        outputs = run_pieces(self.backend, [p for _, pieces in ready for p in pieces], self.batch_size)
        start = 0
        for item, pieces in ready:
            mine, start = outputs[start:start + len(pieces)], start + len(pieces)
            try:
                check(mine)
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)
                continue
            record = dict(item.record or {})
            record[self.settings.out] = join(pieces, [o.text for o in mine])
            record["chunks"] = len(pieces)
            record["stats"] = combine(mine)
            record["manifest"] = self.manifest
            yield Finished(item, record)


@dataclass(frozen=True)
class TranslateRun:
    """One lm-translate run: the translation, the model, the records."""

    settings: TranslateSettings = default(default_factory=TranslateSettings)
    model: ModelSettings = default(default_factory=ModelSettings)
    pipe: PipeSettings = default(default_factory=PipeSettings)


def run(r: TranslateRun, tty: bool) -> int:
    """lm-translate: the model and languages first (fail fast), then stdin to stdout."""
    return run_task("lm-translate", tty, r.model, r.pipe, r.settings.out,
                    lambda lm, batch: TranslateTask(lm, r.settings, batch))
