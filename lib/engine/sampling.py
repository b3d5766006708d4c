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
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was generated
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
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise UsageError(f"--{name.replace('_', '-')} must be in [-2, 2]")
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


class OutputPenalty:
    """OpenAI's presence and frequency penalties, as vLLM applies them: over the tokens generated
    so far (not the prompt's), before temperature. transformers has no processor for them."""

    def __init__(self, presence: float, frequency: float, prompt_len: int):
        self.presence, self.frequency, self.prompt_len = presence, frequency, prompt_len

    def __call__(self, input_ids, scores):
        import torch

        out = input_ids[:, self.prompt_len:]
        counts = torch.zeros_like(scores).scatter_add_(1, out, torch.ones_like(out, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def logits_processors(sampling: Sampling, first: Sequence[Callable] = (), prompt_len: int = 0):
    """The same processors, in the same order, that transformers' generate builds, with OpenAI's
    presence and frequency penalties (counted after `prompt_len`) after its repetition penalty.

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
    if sampling.presence_penalty or sampling.frequency_penalty:
        processors.append(OutputPenalty(sampling.presence_penalty, sampling.frequency_penalty, prompt_len))
    if not sampling.greedy:
        if sampling.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_k:
            processors.append(TopKLogitsWarper(sampling.top_k))
        if sampling.top_p < 1.0:
            processors.append(TopPLogitsWarper(sampling.top_p))
    return processors
