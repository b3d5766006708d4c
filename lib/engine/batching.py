"""Continuous batching: requests join and leave the running batch between decode steps.

The fast path's KV cache has a row per sequence, each with its own length. A new request
is prefilled into the first free row and decodes with the others from the next step on; a
finished or abandoned one frees its row at once (the last live row moves into the hole, so
live rows stay packed at the front and each step reads only them). Each row keeps its own
sampling settings, processors and seed, and reports through lmpipe.engine.generation's row state,
so its tokens, text, stop strings and stats are exactly what the batch loop would produce.

Recent prompts' keys and values are kept (PrefixCache), so a prompt that starts as an earlier
one did (a chat template's system prompt, a pipeline's shared instruction) computes only the
rest, as llama.cpp's prompt cache and vLLM's prefix caching do.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from ..models.fastpath import KVCache, fast_model, prefill, rounded_width, step
from .generation import RowState, advance_to_end, eos_ids, pick
from .sampling import Sampling, logits_processors

MIN_SHARED = 8  # fewer shared tokens than this are cheaper to compute again than to copy


class BatchRequest(Protocol):
    ids: list[int]
    sampling: Sampling

    def emit(self, event: Any) -> None: ...


@dataclass
class Live:
    request: BatchRequest
    state: RowState
    processors: Any
    generator: Any
    history: list[int]
    started: float
    next: int = -1
    done: bool = False

    @property
    def plain(self) -> bool:
        return self.request.sampling.greedy and not self.processors


def shared_length(a: tuple[int, ...], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PrefixCache:
    """Keys and values of recent prompts, at most `max_tokens` columns in all, least recent out first."""

    def __init__(self, max_tokens: int = 4096):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[tuple[int, ...], tuple[list[Any], list[Any]]] = OrderedDict()

    def longest(self, ids: list[int]) -> tuple[tuple[list[Any], list[Any]] | None, int]:
        """The stored prompt sharing the most leading tokens with `ids`, and how many (short of all)."""
        best, best_n = None, 0
        for key in self.entries:
            n = min(shared_length(key, ids), len(ids) - 1)  # the last token is computed: it gives the logits
            if n > best_n:
                best, best_n = key, n
        if best is None:
            return None, 0
        self.entries.move_to_end(best)
        return self.entries[best], best_n

    def add(self, ids: list[int], keys: list[Any], values: list[Any]) -> None:
        key = tuple(ids)
        if len(key) > self.max_tokens:
            return
        self.entries[key] = (keys, values)
        self.entries.move_to_end(key)
        while sum(len(k) for k in self.entries) > self.max_tokens:
            self.entries.popitem(last=False)


class Batcher:
    """Up to `rows` sequences decoding together over one loaded Llama-family model."""

    def __init__(self, model: Any, tokenizer: Any, rows: int):
        self.fast = fast_model(model)
        self.tokenizer = tokenizer
        self.eos = eos_ids(model, tokenizer)
        self.rows = rows
        self.cache: KVCache | None = None
        self.live: list[Live] = []
        self.prefixes = PrefixCache()

    @property
    def free(self) -> int:
        return self.rows - len(self.live)

    def _fit(self, width: int) -> KVCache:
        width = rounded_width(width)
        if self.cache is None:
            self.cache = self.fast.cache(self.rows, width)
        elif self.cache.width < width:
            self.cache = self.cache.grown(width)
        return self.cache

    def admit(self, request: BatchRequest, constraints: tuple[Any, ...] = ()) -> None:
        """Prefill `request` into the next free row and report its first token.

        `constraints`: logits processors for this request alone (its grammar), run first.
        """
        import torch

        if not self.free:
            raise RuntimeError("no free row")
        sampling: Sampling = request.sampling
        cache = self._fit(len(request.ids) + sampling.max_new_tokens)
        row = len(self.live)
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device=str(self.fast.device)).manual_seed(sampling.seed or 0)
        live = Live(request, RowState(len(request.ids)), logits_processors(sampling, constraints), generator,
                    list(request.ids), time.perf_counter())
        ids = torch.tensor([request.ids], dtype=torch.long, device=self.fast.device)
        self.live.append(live)
        try:
            stored, shared = self.prefixes.longest(request.ids)
            if shared >= MIN_SHARED:
                cache.load_prefix(row, *stored, shared)
                rest = ids[:, shared:]
                logits = prefill(self.fast, cache, slice(row, row + 1), rest, torch.ones_like(rest), start=shared)
            else:
                logits = prefill(self.fast, cache, slice(row, row + 1), ids, torch.ones_like(ids))
            self.prefixes.add(request.ids, *cache.prefix(row, len(request.ids)))
        except BaseException:
            self.live.pop()
            raise
        self._choose([live], logits)
        self._sweep()

    def step(self) -> None:
        """One decode step for every live row; finished and abandoned rows leave."""
        import torch

        self._sweep()
        if not self.live:
            return
        chosen = torch.tensor([live.next for live in self.live], dtype=torch.long, device=self.fast.device)
        logits = step(self.fast, self.cache, slice(0, len(self.live)), chosen)
        self._choose(self.live, logits)
        self._sweep()

    def fail(self, exc: BaseException) -> None:
        """Every live request gets `exc`; the rows are freed."""
        for live in self.live:
            live.request.emit(exc)
        self.live = []

    def _choose(self, lives: list[Live], logits) -> None:
        import torch

        if all(live.plain for live in lives):
            tokens = logits.argmax(dim=-1).tolist()
        else:
            tokens = []
            for i, live in enumerate(lives):
                history = torch.tensor([live.history], dtype=torch.long, device=logits.device)
                scores = live.processors(history, logits[i: i + 1])
                generators = [live.generator] if live.generator is not None else None
                tokens.append(int(pick(scores, live.request.sampling.greedy, generators)[0]))
        now = time.perf_counter()
        for live, token in zip(lives, tokens):
            for event in advance_to_end(0, live.state, token, now - live.started, self.tokenizer, self.eos,
                                        live.request.sampling):
                live.request.emit(event)
            live.history.append(token)
            live.next = token
            live.done = live.state.finish is not None

    def _sweep(self) -> None:
        """Free the rows of finished and abandoned requests, packing live rows to the front."""
        i = 0
        while i < len(self.live):
            live = self.live[i]
            if live.done or _cancelled(live.request):
                last = len(self.live) - 1
                if i != last:
                    self.cache.move(last, i)
                    self.live[i] = self.live[last]
                self.live.pop()
                continue
            i += 1


def _cancelled(request: Any) -> bool:
    cancelled = getattr(request, "cancelled", None)
    return bool(cancelled is not None and cancelled.is_set())
