"""The generation loop: prefill, then one token at a time, yielding typed events.

Small functions stacked (pad → prefill → pick → step), in the manner of gpt-fast. It does what
transformers' `generate` does for decoder-only models (left padding, position ids from the
attention mask, logits of the last position only) so greedy output is token-identical to it,
and it reports every token as it comes with its time, for streaming and for the stats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from .decoding import Decoding, decoder
from .sampling import Sampling, logits_processors
from .stops import find_stop, safe_length


@dataclass(frozen=True)
class TopToken:
    id: int
    token: str
    p: float


@dataclass(frozen=True)
class Token:
    """One generated token of row `row`; `text` is the newly printable text (may be empty)."""

    row: int
    id: int
    text: str
    seconds: float  # since the batch started
    p: float | None = None
    top: tuple[TopToken, ...] = ()


@dataclass(frozen=True)
class Completion:
    """A finished row: its text, why it stopped, and how long it took."""

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


Event = Token | Completion


@dataclass
class RowState:
    """One sequence's progress: its tokens, their times, its text so far, and why it stopped."""

    prompt_len: int
    ids: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    probs: list[Token] = field(default_factory=list)
    text: str = ""
    shown: int = 0
    finish: str | None = None


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return ids


def pad_id(tokenizer: Any, eos: set[int]) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return min(eos) if eos else 0


def left_pad(prompts: Sequence[Sequence[int]], pad: int, device: str):
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def pick(scores, greedy: bool, generators: list[Any] | None):
    import torch

    if greedy:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    # One generator per row: a row's sample depends on its seed, not on its batch neighbours.
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators or [])])


@dataclass(frozen=True)
class _Probs:
    """The model's own distribution for this step (before sampling settings), and its top-n."""

    probs: Any
    top: list[tuple[TopToken, ...]]


def top_tokens(logits, tokenizer: Any, n: int) -> _Probs:
    import torch

    probs = torch.softmax(logits, dim=-1)
    values, indices = probs.topk(n, dim=-1)
    top = [
        tuple(TopToken(i, tokenizer.decode([i]), round(v, 6)) for v, i in zip(v_row, i_row))
        for v_row, i_row in zip(values.tolist(), indices.tolist())
    ]
    return _Probs(probs, top)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling,
    top_probs: int = 0,
    device: str = "cpu",
    constraints: Sequence[Any] = (),
    decoding: Decoding = Decoding(),
    draft: Any = None,
) -> Iterator[Event]:
    """Generate for every prompt (token ids) at once; yield Token events and one Completion per row.

    `constraints`: logits processors for this batch that run before sampling's (a grammar mask).
    `draft`: a loaded draft model; greedy, unconstrained batches then decode speculatively
    (lmpipe.engine.speculative, one row at a time), others as usual.
    """
    import torch

    if draft is not None and sampling.greedy and not constraints and not top_probs \
            and sampling.repetition_penalty == 1.0:
        from .speculative import speculate

        yield from speculate(model, draft, tokenizer, prompts, sampling, decoding.draft_tokens)
        return

    eos = eos_ids(model, tokenizer)
    ids, mask = left_pad(prompts, pad_id(tokenizer, eos), device)
    rows = [RowState(len(p)) for p in prompts]
    processors = logits_processors(sampling, constraints)
    generators = None
    if not sampling.greedy:
        generators = [torch.Generator(device=device).manual_seed(sampling.seed or 0) for _ in prompts]
    history = ids  # what the processors see (repetition penalty reads it)
    run = decoder(model, mask, sampling.max_new_tokens, decoding)
    started = time.perf_counter()

    logits = run.prefill(ids)
    for _step in range(sampling.max_new_tokens):
        scores = processors(history, logits)
        chosen = pick(scores, sampling.greedy, generators)
        now = time.perf_counter() - started
        tops = top_tokens(logits, tokenizer, top_probs) if top_probs else None
        for r, row in enumerate(rows):
            if row.finish:
                chosen[r] = pad_id(tokenizer, eos)
                continue
            yield from advance(r, row, int(chosen[r]), now, tokenizer, eos, sampling, tops)
            if row.finish:
                yield complete(r, row)
        if all(row.finish for row in rows):
            break
        history = torch.cat([history, chosen[:, None]], dim=-1)
        logits = run.step(chosen)
    for r, row in enumerate(rows):
        if not row.finish:
            row.finish = "length"
            yield complete(r, row)


def advance(r, row: RowState, token_id, now, tokenizer, eos, sampling: Sampling, tops: _Probs | None) -> Iterator[Event]:
    row.times.append(now)
    if token_id in eos:
        row.finish = "eos"
        return
    row.ids.append(token_id)
    text = tokenizer.decode(row.ids, skip_special_tokens=True)
    longest = max((len(s) for s in sampling.stop), default=0)
    cut = find_stop(text, sampling.stop, max(0, len(row.text) - longest))
    if cut >= 0:
        text, row.finish = text[:cut], "stop"
    row.text = text
    visible = len(text) if row.finish else safe_length(text, sampling.stop)
    delta = text[row.shown:visible] if visible > row.shown else ""
    row.shown = max(row.shown, visible)
    p, top = None, ()
    if tops is not None:
        p, top = round(float(tops.probs[r, token_id]), 6), tops.top[r]
    event = Token(r, token_id, delta, now, p, top)
    if tops is not None:
        row.probs.append(event)
    yield event


def advance_to_end(r, row: RowState, token_id, now, tokenizer, eos, sampling: Sampling) -> Iterator[Event]:
    """advance(), then the row's Completion if it ends here: end of sequence, a stop string, or
    max_new_tokens reached. For loops that do not count steps themselves (continuous batching,
    speculative decoding)."""
    yield from advance(r, row, token_id, now, tokenizer, eos, sampling, None)
    if not row.finish and len(row.times) >= sampling.max_new_tokens:
        row.finish = "length"
    if row.finish:
        yield complete(r, row)


def complete(r: int, row: RowState) -> Completion:
    ttft, end, steps = row.times[0], row.times[-1], len(row.times)
    # Decode speed, as llama.cpp and Ollama report it: tokens after the first, over the time after it.
    rate = (steps - 1) / (end - ttft) if steps > 1 and end > ttft else (steps / end if end > 0 else 0.0)
    return Completion(
        row=r,
        ids=tuple(row.ids),
        text=row.text,
        finish_reason=row.finish or "length",
        input_tokens=row.prompt_len,
        output_tokens=len(row.ids),
        ttft_s=round(ttft, 6),
        total_s=round(end, 6),
        tokens_per_s=round(rate, 3),
        token_seconds=tuple(row.times),
        tokens=tuple(row.probs),
    )
