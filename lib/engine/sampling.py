"""Sampling settings, validated, and the transformers logits processors that apply them."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import LogitsProcessorList


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token. temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0  # keep tokens at least min_p times as likely as the likeliest (0: off)
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was generated
    max_new_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    logit_bias: tuple[tuple[int, float], ...] = ()  # OpenAI's: (token id, -100..100) added to its logit
    reasoning_budget: int | None = None  # thinking tokens before the think block is closed (None: no bound)

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise UsageError("--temperature must be 0 (greedy) or more")
        if not 0 < self.top_p <= 1:
            raise UsageError("--top-p must be in (0, 1]")
        if self.top_k < 0:
            raise UsageError("--top-k must be 0 (off) or more")
        if not 0 <= self.min_p <= 1:
            raise UsageError("--min-p must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise UsageError("--repetition-penalty must be more than 0")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise UsageError(f"--{name.replace('_', '-')} must be in [-2, 2]")
        if self.max_new_tokens < 1:
            raise UsageError("--max-new-tokens must be at least 1")
        if any(not s for s in self.stop):
            raise UsageError("--stop strings must not be empty")
        for token, bias in self.logit_bias:
            if token < 0:
                raise UsageError(f"--logit-bias {token}: token ids are 0 or more")
            if not -100 <= bias <= 100:
                raise UsageError(f"--logit-bias {token}={bias}: the bias must be in [-100, 100]")
        if self.reasoning_budget is not None and self.reasoning_budget < 0:
            raise UsageError("--reasoning-budget must be 0 or more")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_seed(self) -> Sampling:
        """A copy with a concrete seed, drawn now if none was given, so the manifest can replay it."""
        if self.seed is not None:
            return self
        return replace(self, seed=secrets.randbits(31))

    def manifest(self) -> dict[str, Any]:
        """As JSON: logit_bias as OpenAI's map of token ids (as strings) to biases."""
        return {**asdict(self), "stop": list(self.stop),
                "logit_bias": {str(token): bias for token, bias in self.logit_bias}}

    def check_vocabulary(self, size: int) -> None:
        """Every logit_bias token is in a vocabulary of `size` tokens (a UsageError names the first not)."""
        for token, _ in self.logit_bias:
            if token >= size:
                raise UsageError(f"--logit-bias {token}: not a token id of this model (its vocabulary has {size})")


def parse_logit_bias(pairs: Sequence[str]) -> tuple[tuple[int, float], ...]:
    """--logit-bias ID=BIAS, repeated (a later one for the same id wins, as in a JSON map)."""
    out: dict[int, float] = {}
    for pair in pairs:
        token, sep, bias = pair.partition("=")
        try:
            out[int(token)] = float(bias)
        except ValueError:
            raise UsageError(f"--logit-bias {pair!r}: use ID=BIAS (a token id and a number)") from None
        if not sep:
            raise UsageError(f"--logit-bias {pair!r}: use ID=BIAS (a token id and a number)")
    return tuple(out.items())


class LogitBias:
    """OpenAI's logit_bias: each listed token's logit moved by its bias, before anything else
    (transformers' sequence bias runs first too); -100 bans a token, 100 all but forces it."""

    def __init__(self, bias: Sequence[tuple[int, float]]):
        self.ids = [token for token, _ in bias]
        self.values = [value for _, value in bias]

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        import torch

        ids = torch.tensor(self.ids, dtype=torch.long, device=scores.device)
        out = scores.clone()
        out[:, ids] += torch.tensor(self.values, dtype=scores.dtype, device=scores.device)
        return out


class OutputPenalty:
    """OpenAI's presence and frequency penalties, as vLLM applies them: over the tokens generated
    so far (not the prompt's), before temperature. transformers has no processor for them."""

    def __init__(self, presence: float, frequency: float, prompt_len: int):
        self.presence, self.frequency, self.prompt_len = presence, frequency, prompt_len

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        import torch

        out = input_ids[:, self.prompt_len:]
        counts = torch.zeros_like(scores).scatter_add_(1, out, torch.ones_like(out, dtype=scores.dtype))
        return scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)


def logits_processors(sampling: Sampling, first: Sequence[Callable[[Tensor, Tensor], Tensor]] = (),
                      prompt_len: int = 0) -> LogitsProcessorList:
    """The same processors, in the same order, that transformers' generate builds (logit bias,
    repetition penalty, temperature, top-k, top-p, min-p), with OpenAI's presence and frequency
    penalties (counted after `prompt_len`) after its repetition penalty.

    `first` (a grammar mask, for one) runs before them, so temperature, top-k and top-p only
    ever choose among the tokens it allows.
    """
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList(first)
    if sampling.logit_bias:
        processors.append(LogitBias(sampling.logit_bias))
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
        if sampling.min_p > 0:
            processors.append(MinPLogitsWarper(sampling.min_p))
    return processors
