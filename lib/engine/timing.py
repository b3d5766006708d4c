"""Token times and the stats made of them: the one definition of time to first token and tokens/s.

Every loop reads its token times from a `Clock` and every Completion's `ttft_s`, `total_s` and
`tokens_per_s` come from `rates` (lm-generate, lm-serve, speculative decoding, the seq2seq
tasks, the dashboard); a record made of several model calls combines its pieces with
`combined_rate`; lm-serve's inter-token latencies are `gaps`. "tokens_per_s" means one thing everywhere: decode speed,
as llama.cpp and
Ollama report it, tokens after the first over the time after the first. Any other count per
second (lm-bench's rates, the dashboard's live meter) is `per_second` too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise


class Clock:
    """Seconds since it was made (a batch's start, a request's admission)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.started


@dataclass(frozen=True)
class Rates:
    ttft_s: float
    total_s: float
    tokens_per_s: float


def per_second(count: float, seconds: float) -> float:
    """`count` over `seconds` (0 when no time passed): decode speed when given the tokens after
    the first and the time after it."""
    return round(count / seconds, 3) if seconds > 0 else 0.0


def rates(token_seconds: Sequence[float]) -> Rates:
    """A row's stats from the times its tokens came (seconds since its start, one per decode step,
    end of sequence included). A row whose tokens all came at once (one step, or beam search,
    which gives every token at the end) is rated over its whole time instead."""
    if not token_seconds:
        return Rates(0.0, 0.0, 0.0)
    ttft, end, steps = token_seconds[0], token_seconds[-1], len(token_seconds)
    if steps > 1 and end > ttft:
        rate = per_second(steps - 1, end - ttft)
    else:
        rate = round(steps / end, 3) if end > 0 else 0.0
    return Rates(round(ttft, 6), round(end, 6), rate)


def combined_rate(pieces: Sequence[tuple[int, float, float]]) -> float:
    """One rate for pieces decoded apart (output_tokens, ttft_s, total_s each): their decode tokens
    over their decode time, summed."""
    tokens = sum(max(out - 1, 0) for out, _, _ in pieces)
    seconds = sum(max(total - ttft, 0.0) for _, ttft, total in pieces)
    return per_second(tokens, seconds)


def gaps(token_seconds: Sequence[float]) -> list[float]:
    """The time between each token and the one before it (end of sequence included): the
    inter-token latencies vLLM's metrics observe, one fewer than the tokens."""
    return [b - a for a, b in pairwise(token_seconds)]
