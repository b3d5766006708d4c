"""The typed events every generation loop yields: a token as it comes, a row when it is done.

lm-generate's batches, lm-serve's requests, speculative decoding, the seq2seq tasks and the
dashboard all consume these (lmpipe.engine.loop makes them; lmpipe.backends.seq2seq makes Completions).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopToken:
    id: int
    token: str
    p: float  # rounded to 6 places, as records show it
    logprob: float  # the model's own log-probability, unrounded (OpenAI's logprobs)


@dataclass(frozen=True)
class Token:
    """One generated token of row `row`; `text` is the newly printable text (may be empty)."""

    row: int
    id: int
    text: str
    seconds: float  # since the row's start
    p: float | None = None
    top: tuple[TopToken, ...] = ()
    logprob: float | None = None  # unrounded; None where nothing was asked (or a prompt's first token)


@dataclass(frozen=True)
class Completion:
    """A finished row: its text, why it stopped, and how long it took (lmpipe.engine.timing's stats)."""

    row: int
    ids: tuple[int, ...]
    text: str
    finish_reason: str  # "eos", "stop" or "length"
    input_tokens: int
    output_tokens: int
    ttft_s: float
    total_s: float
    tokens_per_s: float
    token_seconds: tuple[float, ...] = ()
    tokens: tuple[Token, ...] = ()  # with probabilities, when asked for
    prompt_tokens: tuple[Token, ...] = ()  # the prompt's own tokens, scored (echo); `text` is each one's
    end: Token | None = None  # the end-of-sequence token that ended it, with probabilities when asked for


@dataclass(frozen=True)
class ScoredPrompt:
    """Row `row`'s prompt tokens scored by its prefill (echo), before its first token: each
    Token's `text` is its own text, and the first has no probability."""

    row: int
    tokens: tuple[Token, ...]


Event = Token | Completion | ScoredPrompt
