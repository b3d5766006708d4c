"""Sampling settings, validated, and the transformers logits processors that apply them."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from ..errors import UsageError


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token. temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UsageError("--temperature must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise UsageError("--top-p must be in (0, 1]")
        if self.top_k < 0:
            raise UsageError("--top-k must be 0 (off) or more")
        if self.repetition_penalty <= 0:
            raise UsageError("--repetition-penalty must be more than 0")
        if self.max_new_tokens < 1:
            raise UsageError("--max-new-tokens must be at least 1")
        if any(not s for s in self.stop):
            raise UsageError("--stop strings must not be empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_seed(self) -> "Sampling":
        """A copy with a concrete seed, drawn now if none was given, so the manifest can replay it."""
        if self.seed is not None:
            return self
        return Sampling(**{**asdict(self), "seed": secrets.randbits(31), "stop": self.stop})

    def manifest(self) -> dict:
        return {**asdict(self), "stop": list(self.stop)}


def logits_processors(sampling: Sampling, first: Sequence[Callable] = ()):
    """The same processors, in the same order, that transformers' generate builds.

    `first` (a grammar mask, for one) runs before them, so temperature, top-k and top-p only
    ever choose among the tokens it allows.
    """
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList(first)
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if not sampling.greedy:
        if sampling.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            processors.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
    return processors
