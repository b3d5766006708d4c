"""The one generation loop: rows are prefilled, stepped, joined and released over a model runner.

Every front door feeds it `Request`s and reads back the typed events of lmpipe.engine.events:
lm-generate's batches (lmpipe.engine.generation.generate), lm-serve's continuous batching
(lmpipe.engine.scheduler), the chat and translate/summarize tasks through them, and the dashboard's chat.
What differs between requests is a row's policies, not the loop: its sampling settings and seed,
its stop strings and length, its grammar and thinking budget (logits processors that run first,
lmpipe.engine.thinking), the probabilities
it reports, and speculative decoding (a draft model that proposes tokens the model checks,
lmpipe.engine.speculative). As in vLLM's engine and llama.cpp's server slots, one scheduler serves them
all; a model runner only runs the model:

- lmpipe.engine.batching.FastRows: lmpipe's fast path, a KV cache with a row per sequence; rows join
  and leave between steps (continuous batching, prompt cache, speculative rows).
- lmpipe.engine.decoding.StaticBatch: transformers' own forward (dynamic or static cache) or the compiled
  fast step, over one left-padded batch whose rows are admitted together.

It does what transformers' `generate` does for decoder-only models (left padding, position ids
from the attention mask, the same logits processors in the same order), so greedy output is
token-identical to it, and it reports every token as it comes with its time (lmpipe.engine.timing).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import timing
from .events import Completion, Event, ScoredPrompt, Token, TopToken
from .sampling import Sampling, logits_processors
from .stops import find_stop, safe_length

if TYPE_CHECKING:
    from torch import Tensor


class ModelRunner(Protocol):
    """How the loop runs the model: rows of a KV cache, each addressed by the handle it was given."""

    joins: bool  # rows may be admitted while others decode (else a batch is admitted whole)
    capacity: int  # rows it holds at once
    device: Any

    def prefill(self, prompts: Sequence[Sequence[int]], room: int, every: bool = False) -> tuple[list[Any], Any]:
        """Admit `prompts` together, each with `room` columns to grow by: their handles, and the
        logits of each one's next token [n, vocab]; with `every` (one prompt), the logits after
        each of its tokens [1, len, vocab]. A model runner that takes images (StaticBatch with a
        processor) also takes `inputs=`: each prompt's lmpipe.engine.multimodal.ImagePrompt; and
        `adapters=`, where a row names its LoRA adapter: each prompt's slot (None: the model's default)."""

    def step(self, handles: Sequence[Any], tokens: Sequence[int]) -> Any:
        """Feed each row its next token: the logits of the token after it [n, vocab], in `handles` order."""

    def release(self, handle: Any) -> None: ...

    def reset(self) -> None:
        """Forget every row (a step failed)."""


@dataclass
class Request:
    """One sequence to generate, the policies of its row, and where its events go. lm-serve's
    scheduler (lmpipe.engine.scheduler) queues it as it comes, naming its `grammar` and `lora`,
    and makes them the row's `constraints` and adapter slot when it admits it."""

    ids: Sequence[int]
    sampling: Sampling
    emit: Callable[[Any], None]  # a Token, a Completion, or (lm-serve) the exception that failed it
    row: int = 0  # the number its events carry
    constraints: tuple[Any, ...] = ()  # logits processors of this row alone (its grammar), run first
    top_probs: int = 0  # report each token's probability and the `top_probs` likeliest
    logprobs: bool = False  # report each token's probability even with no `top_probs`
    echo: bool = False  # score the prompt's own tokens too, in its prefill's one pass (Completion.prompt_tokens)
    generates: bool = True  # False: score the prompt only (echo), no new token
    draft: Any = None  # lmpipe.engine.speculative.Draft: speculative rounds, for greedy plain rows
    cancelled: threading.Event = field(default_factory=threading.Event)  # set: its client went away, free the row
    inputs: Any = None  # lmpipe.engine.multimodal.ImagePrompt: its images, for the prefill's forward
    adapter: int | None = None  # its LoRA adapter's slot (lmpipe.models.adapters.LoraStack.slot); None: the default
    grammar: str | None = None  # llguidance's grammar the answer must follow (lmpipe.engine.constrain); None: free
    lora: str | None = None  # lm-serve: its LoRA adapter by its name in ModelSettings.loras (None: none)

    @property
    def speculates(self) -> bool:
        """A draft applies to greedy rows that nothing else constrains (their tokens are the argmax)."""
        s = self.sampling
        return (self.draft is not None and s.greedy and not self.constraints and not self.reports and not self.echo
                and s.repetition_penalty == 1.0 and not s.presence_penalty and not s.frequency_penalty
                and not s.logit_bias and s.reasoning_budget is None)

    @property
    def reports(self) -> bool:
        """Its tokens carry their probabilities."""
        return self.logprobs or self.top_probs > 0


@dataclass
class RowState:
    """One sequence's progress: its tokens, their times, its text so far, and why it stopped."""

    prompt_len: int
    ids: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    probs: list[Token] = field(default_factory=list)
    prompt_scores: list[Token] = field(default_factory=list)
    end: Token | None = None  # the end-of-sequence token, when probabilities are reported
    text: str = ""
    shown: int = 0
    finish: str | None = None


@dataclass(frozen=True)
class Probs:
    """The model's own distribution for one row's step (before sampling settings), and its top-n."""

    logprobs: Any  # [vocab], float32
    top: tuple[TopToken, ...]

    def of(self, token_id: int) -> tuple[float, float]:
        """The token's probability (rounded, as records show it) and log-probability."""
        logprob = float(self.logprobs[token_id])
        return round(math.exp(logprob), 6), logprob


def top_tokens(logits: Tensor, tokenizer: Any, n: int) -> Probs:
    """For logits [1, vocab]."""
    import torch

    logprobs = torch.log_softmax(logits[0].float(), dim=-1)
    values, indices = logprobs.topk(n, dim=-1)
    top = tuple(TopToken(i, tokenizer.decode([i]), round(math.exp(v), 6), v)
                for v, i in zip(values.tolist(), indices.tolist(), strict=True))
    return Probs(logprobs, top)


def prompt_scores(ids: Sequence[int], logits: Tensor, tokenizer: Any, n: int) -> list[Token]:
    """The prompt's own tokens, each scored by the logits before it [len, vocab] (the first by
    nothing), with the `n` likeliest there, as vLLM's echo reports them."""
    scores = [Token(0, ids[0], tokenizer.decode([ids[0]]), 0.0)] if ids else []
    for i in range(1, len(ids)):
        probs = top_tokens(logits[i - 1: i], tokenizer, n)
        p, logprob = probs.of(ids[i])
        scores.append(Token(0, ids[i], tokenizer.decode([ids[i]]), 0.0, p, probs.top, logprob))
    return scores


def pick(scores: Tensor, greedy: bool, generators: list[Any] | None) -> Tensor:
    import torch

    if greedy:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    # One generator per row: a row's sample depends on its seed, not on its batch neighbours.
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators or [])])


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
        return int(tokenizer.pad_token_id)
    return min(eos) if eos else 0


def advance(r: int, row: RowState, token_id: int, now: float, tokenizer: Any, eos: set[int], sampling: Sampling,
            probs: Probs | None = None) -> Iterator[Event]:
    """Take one token into the row: its Token event (none for end of sequence), and the row's
    Completion if it ends here: end of sequence, a stop string, or max_new_tokens reached."""
    row.times.append(now)
    if token_id in eos:
        row.finish = "eos"
        if probs is not None:  # not an event, not in the text; its probability is still the model's
            (p, logprob), top = probs.of(token_id), probs.top
            row.end = Token(r, token_id, "", now, p, top, logprob)
    else:
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
        p, top, logprob = None, (), None
        if probs is not None:
            (p, logprob), top = probs.of(token_id), probs.top
        event = Token(r, token_id, delta, now, p, top, logprob)
        if probs is not None:
            row.probs.append(event)
        yield event
        if not row.finish and len(row.times) >= sampling.max_new_tokens:
            row.finish = "length"
    if row.finish:
        yield complete(r, row)


def complete(r: int, row: RowState) -> Completion:
    """The Completion of a finished row; its stats are lmpipe.engine.timing's."""
    stats = timing.rates(row.times)
    return Completion(
        row=r,
        ids=tuple(row.ids),
        text=row.text,
        finish_reason=row.finish or "length",
        input_tokens=row.prompt_len,
        output_tokens=len(row.ids),
        ttft_s=stats.ttft_s,
        total_s=stats.total_s,
        tokens_per_s=stats.tokens_per_s,
        token_seconds=tuple(row.times),
        tokens=tuple(row.probs),
        prompt_tokens=tuple(row.prompt_scores),
        end=row.end,
    )


@dataclass(eq=False)
class _Row:
    request: Request
    state: RowState
    processors: Any  # None: greedy with nothing to apply, the argmax
    generator: Any
    history: list[int]
    clock: timing.Clock = field(default_factory=timing.Clock)  # restarted at admission
    handle: Any = None
    drafting: Any = None  # the row's draft model state while it decodes speculatively
    next: int = -1  # chosen, not yet fed to the model


class Loop:
    """Rows decoding together over one model runner; each request's row keeps its own policies."""

    def __init__(self, runner: ModelRunner, tokenizer: Any, eos: set[int]):
        self.runner, self.tokenizer, self.eos = runner, tokenizer, eos
        self.live: list[_Row] = []
        self._events: list[tuple[Request, Event]] = []  # this step's, reported once finished rows are freed

    @property
    def free(self) -> int:
        """How many requests may be admitted now."""
        if self.live and not self.runner.joins:
            return 0
        return self.runner.capacity - len(self.live)

    def admit(self, requests: Sequence[Request]) -> None:
        """Prefill `requests` into free rows and report each one's first token.

        Rows that decode speculatively or score their prompt (echo) are prefilled one by one
        (their rows hold no padding), the others together.
        """
        if len(requests) > self.free:
            raise RuntimeError("no free row")
        rows = [self._row(r) for r in requests]
        clock = timing.Clock()  # a row's times count from its admission: its prefill is in its first token's time
        alone = [row for row in rows if row.request.speculates or row.request.echo]
        together = [row for row in rows if row not in alone]
        groups = ([together] if together else []) + [[row] for row in alone]
        if len(groups) > 1 and not self.runner.joins:
            raise RuntimeError("rows prefilled alone (speculative, echo) need a model runner whose rows join")
        try:
            for group in groups:
                room = max(row.request.sampling.max_new_tokens
                           + (row.request.draft.extra if row.request.speculates else 0) for row in group)
                echo = group[0].request.echo
                extras: dict[str, Any] = {"inputs": [row.request.inputs for row in group]} if any(
                    row.request.inputs is not None for row in group) else {}
                if any(row.request.adapter is not None for row in group):
                    extras["adapters"] = [row.request.adapter for row in group]
                handles, logits = self.runner.prefill([row.request.ids for row in group], room, every=echo, **extras)
                for row, handle in zip(group, handles, strict=True):
                    row.clock, row.handle = clock, handle
                    if row.request.speculates:
                        row.drafting = row.request.draft.start(row.request.ids, room)
                    self.live.append(row)
                if echo:
                    self._score_prompt(group[0], logits[0])
                    logits = logits[:, -1, :]
                    if group[0].state.finish:
                        continue
                self._choose(group, logits)
        finally:
            self._report()

    def step(self) -> None:
        """One decode step for every live row (a speculative round for those that draft);
        finished and abandoned rows leave."""
        self._sweep()
        try:
            plain = [row for row in self.live if row.drafting is None]
            if plain:
                self._choose(plain, self.runner.step([row.handle for row in plain], [row.next for row in plain]))
            for row in self.live:
                if row.drafting is not None and not row.state.finish:
                    left = row.request.sampling.max_new_tokens - len(row.state.times)
                    tokens = row.drafting.round(self.runner, row.handle, row.next, left)
                    self._take(row, tokens, row.clock())
        finally:
            self._report()

    def fail(self, exc: BaseException) -> None:
        """Every live request gets `exc`; the rows are freed."""
        for row in self.live:
            row.request.emit(exc)
        self.live = []
        self.runner.reset()

    def _score_prompt(self, row: _Row, logits: Tensor) -> None:
        """The prompt's tokens scored from its prefill's logits; a row that only scores ends here."""
        request = row.request
        row.state.prompt_scores = prompt_scores(request.ids, logits, self.tokenizer, request.top_probs)
        self._events.append((request, ScoredPrompt(request.row, tuple(row.state.prompt_scores))))
        if not request.generates:  # no token: no times, and stats of zeros
            row.state.finish = "length"
            self._events.append((request, complete(request.row, row.state)))

    def _row(self, request: Request) -> _Row:
        import torch

        sampling = request.sampling
        first = request.constraints
        if sampling.reasoning_budget is not None:
            from .thinking import ThinkingBudget

            first = (*first, ThinkingBudget(self.tokenizer, sampling.reasoning_budget, len(request.ids)))
        processors = logits_processors(sampling, first, len(request.ids))
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=str(self.runner.device)).manual_seed(sampling.seed or 0)
        plain = sampling.greedy and not processors
        return _Row(request, RowState(len(request.ids)), None if plain else processors, generator, list(request.ids))

    def _choose(self, rows: list[_Row], logits: Tensor) -> None:
        """Each row's next token from its logits, under its own policies; report them."""
        import torch

        if all(row.processors is None and not row.request.reports for row in rows):
            tokens = logits.argmax(dim=-1).tolist()
            probs: list[Probs | None] = [None] * len(rows)
        else:
            tokens, probs = [], []
            for i, row in enumerate(rows):
                own = logits[i: i + 1]
                probs.append(top_tokens(own, self.tokenizer, row.request.top_probs) if row.request.reports else None)
                if row.processors is None:
                    tokens.append(int(own.argmax(dim=-1)))
                    continue
                history = torch.tensor([row.history], dtype=torch.long, device=logits.device)
                scores = row.processors(history, own)
                generators = [row.generator] if row.generator is not None else None
                tokens.append(int(pick(scores, row.request.sampling.greedy, generators)[0]))
        times: dict[int, float] = {}  # one reading of each clock per step: rows admitted together share it
        for row, token, p in zip(rows, tokens, probs, strict=True):
            if id(row.clock) not in times:
                times[id(row.clock)] = row.clock()
            self._take(row, [token], times[id(row.clock)], p)

    def _take(self, row: _Row, tokens: list[int], now: float, probs: Probs | None = None) -> None:
        request = row.request
        for token in tokens:
            for event in advance(request.row, row.state, token, now, self.tokenizer, self.eos, request.sampling, probs):
                self._events.append((request, event))
            row.history.append(token)
            row.next = token
            if row.state.finish:
                return

    def _report(self) -> None:
        """Free finished rows, then report the step's events in order: a request that has its
        Completion has its row back already, and an abandoned one gets nothing more."""
        self._sweep()
        events, self._events = self._events, []
        for request, event in events:
            if not request.cancelled.is_set():
                request.emit(event)

    def _sweep(self) -> None:
        """Free the rows of finished and abandoned requests."""
        kept = []
        for row in self.live:
            if row.state.finish or row.request.cancelled.is_set():
                self.runner.release(row.handle)
            else:
                kept.append(row)
        self.live = kept
