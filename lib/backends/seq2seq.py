"""Encoder-decoder models (Marian, mBART, NLLB, M2M100, T5, BART, PEGASUS) through `model.generate`.

transformers 5 has no translation or summarization pipelines; this is the thin layer lmpipe
puts in their place: pad a batch, call `generate` with the settings and language codes, decode,
and time the steps (a streamer sees every step when there is one beam; beam search gives its
tokens only at the end, so then the first token comes when all do). Beam search stays
transformers' loop; its rows end as the one loop's do (lmpipe.engine.loop.complete: the same
Completion events, the same stats from lmpipe.engine.timing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..engine.events import Completion
from ..engine.loop import RowState, complete
from ..engine.timing import Clock
from ..errors import UsageError
from ..text.languages import Languages

DEFAULT_WINDOW = 512  # for models without a fixed number of positions (T5)


@dataclass(frozen=True)
class Seq2SeqSettings:
    """Beam and length settings; None means the model's own generation config decides."""

    num_beams: int | None = None
    max_length: int | None = None
    min_length: int | None = None

    def __post_init__(self) -> None:
        if self.num_beams is not None and self.num_beams < 1:
            raise UsageError("--num-beams must be at least 1")
        if self.max_length is not None and self.max_length < 2:
            raise UsageError("--max-length must be at least 2")
        if self.min_length is not None and self.min_length < 0:
            raise UsageError("--min-length must be 0 or more")
        if self.min_length and self.max_length and self.min_length >= self.max_length:
            raise UsageError("--min-length must be less than --max-length")

    def kwargs(self) -> dict[str, Any]:
        given = {"num_beams": self.num_beams, "max_length": self.max_length, "min_length": self.min_length}
        return {k: v for k, v in given.items() if v is not None}


def window(model: Any, tokenizer: Any) -> int:
    """How many input tokens the encoder takes at once."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_source_positions"):
        if isinstance(value := getattr(config, name, None), int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else DEFAULT_WINDOW


class _StepClock:
    """A streamer that only notes when each decoding step's tokens arrive, and what they are."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.steps: list[tuple[float, list[int]]] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # the first call carries the decoder's start tokens
            self._prompt_seen = True
            return
        self.steps.append((self.clock(), value.reshape(-1).tolist()))

    def end(self) -> None:
        pass


class Seq2SeqGenerator:
    """Runs one language setting and one generation setting over batches of texts."""

    def __init__(self, model: Any, tokenizer: Any, device: str, settings: Seq2SeqSettings,
                 languages: Languages | None = None, prefix: str = ""):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.languages = languages
        self.prefix = (languages.prefix if languages else "") + prefix
        self.window = window(model, tokenizer)
        if settings.max_length is None and getattr(model.generation_config, "max_length", None) is None:
            # transformers would stop after 20 new tokens; lmpipe lets an output be as long as the window.
            settings = replace(settings, max_length=self.window)
        self.settings = settings
        self.eos = _ids(model.generation_config.eos_token_id) | _ids(tokenizer.eos_token_id)
        self.pad = tokenizer.pad_token_id

    def effective(self) -> dict[str, Any]:
        """The beam and length settings generate will use, for the manifest."""
        config = self.model.generation_config
        return {
            "num_beams": self.settings.num_beams or getattr(config, "num_beams", None) or 1,
            "max_length": self.settings.max_length or getattr(config, "max_length", None),
            "min_length": self.settings.min_length if self.settings.min_length is not None
            else getattr(config, "min_length", None) or 0,
        }

    def _set_source(self) -> None:
        lang = self.languages
        if lang and lang.family in ("mbart", "nllb", "m2m100") and lang.source_code:
            self.tokenizer.src_lang = lang.source_code
            if lang.family != "m2m100":
                self.tokenizer.tgt_lang = lang.target_code

    def count(self, text: str) -> int:
        """Tokens the encoder sees for `text`, specials and prefix included."""
        self._set_source()
        return len(self.tokenizer(self.prefix + text, verbose=False)["input_ids"])

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = self.settings.kwargs()
        if self.languages and self.languages.target_token:
            kwargs["forced_bos_token_id"] = self.tokenizer.convert_tokens_to_ids(self.languages.target_token)
        return kwargs

    def encode(self, texts: Sequence[str]):
        self._set_source()
        return self.tokenizer([self.prefix + t for t in texts], return_tensors="pt", padding=True).to(self.device)

    def run(self, texts: Sequence[str]) -> list[Completion]:
        """Generate for every text at once; one Completion per text, in order."""
        inputs = self.encode(texts)
        kwargs = self.generate_kwargs()
        beams = kwargs.get("num_beams") or getattr(self.model.generation_config, "num_beams", 1) or 1
        started = Clock()
        clock = _StepClock(started) if beams == 1 else None
        out = self.model.generate(**inputs, **kwargs, streamer=clock)
        total = started()
        lengths = inputs["attention_mask"].sum(dim=-1).tolist()
        return [self._completion(r, row, lengths[r], clock, total) for r, row in enumerate(out.tolist())]

    def _completion(self, r: int, row: list[int], input_tokens: int, clock: _StepClock | None,
                    total: float) -> Completion:
        generated = row[1:]  # the decoder start token is not generated
        ids, finish = [], "length"
        for token in generated:
            if token in self.eos:
                finish = "eos"
                break
            ids.append(token)
        steps = len(ids) + (finish == "eos")
        if clock is not None and clock.steps:
            times = [t for t, _ in clock.steps[:steps]] or [clock.steps[0][0]]
        else:
            times = [total] * max(steps, 1)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return complete(r, RowState(input_tokens, ids, times, text=text, finish=finish))


def _ids(value: Any) -> set[int]:
    if isinstance(value, int):
        return {value}
    return set(value or ())
