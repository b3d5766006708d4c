"""The fast path's rows: sequences join and leave the running batch between decode steps.

lmpipe.engine.loop's model runner over lmpipe.models.fastpath's KV cache, which has a row per sequence, each with
its own length. A new request is prefilled into the first free row and decodes with the others
from the next step on; a finished or abandoned one frees its row at once (the last live row
moves into the hole, so live rows stay packed at the front and each step reads only them).
Prompts admitted together (an lm-generate batch) are prefilled as one left-padded batch. A row
can also take several tokens in one pass and forget some of them again (speculative decoding's
check, lmpipe.engine.speculative).

Recent prompts' keys and values may be kept (PrefixCache, lm-serve), so a prompt that starts as
an earlier one did (a chat template's system prompt, a pipeline's shared instruction) computes
only the rest, as llama.cpp's prompt cache and vLLM's prefix caching do.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..models.adapters import stack_of
from ..models.fastpath import KVCache, fast_model, prefill, rounded_width, step
from .decoding import left_pad

if TYPE_CHECKING:
    from torch import Tensor

MIN_SHARED = 8  # fewer shared tokens than this are cheaper to compute again than to copy


def shared_length(a: tuple[int, ...], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # a common prefix: the two may differ in length
        if x != y:
            break
        n += 1
    return n


@dataclass
class PrefixCounts:
    """Prompt tokens looked up in a prefix cache, and those it served, as vLLM counts them
    (prefix_cache_queries, prefix_cache_hits); kept by whoever outlives the caches (lm-serve's
    scheduler makes a new cache each time it loads the model)."""

    queries: int = 0
    hits: int = 0


class PrefixCache:
    """Keys and values of recent prompts, at most `max_tokens` columns in all, least recent out first."""

    def __init__(self, max_tokens: int = 4096, counts: PrefixCounts | None = None):
        self.max_tokens = max_tokens
        self.entries: OrderedDict[tuple[int, ...], tuple[list[Any], list[Any]]] = OrderedDict()
        self.slots: dict[tuple[int, ...], int] = {}  # the LoRA adapter slot each was computed with (absent: 0)
        self.counts = counts if counts is not None else PrefixCounts()

    def longest(self, ids: list[int], slot: int = 0) -> tuple[tuple[list[Any], list[Any]] | None, int]:
        """The stored prompt sharing the most leading tokens with `ids`, and how many (short of all),
        among those computed with the same LoRA adapter slot (its keys and values are its own)."""
        best, best_n = None, 0
        for key in self.entries:
            if self.slots.get(key, 0) != slot:
                continue
            n = min(shared_length(key, ids), len(ids) - 1)  # the last token is computed: it gives the logits
            if n > best_n:
                best, best_n = key, n
        if best is None:
            return None, 0
        self.entries.move_to_end(best)
        return self.entries[best], best_n

    def add(self, ids: list[int], keys: list[Any], values: list[Any], slot: int = 0) -> None:
        key = tuple(ids)
        if len(key) > self.max_tokens:
            return
        self.entries[key] = (keys, values)
        self.slots.pop(key, None)
        if slot:
            self.slots[key] = slot
        self.entries.move_to_end(key)
        while sum(len(k) for k in self.entries) > self.max_tokens:
            gone, _ = self.entries.popitem(last=False)
            self.slots.pop(gone, None)


class Slot:
    """A request's row in the cache; `index` changes when rows are packed. `adapter`: its LoRA
    adapter's slot (lmpipe.models.adapters.LoraStack), which moves with it."""

    __slots__ = ("index", "adapter")

    def __init__(self, index: int, adapter: int = 0):
        self.index = index
        self.adapter = adapter


class FastRows:
    """Up to `capacity` sequences of one Llama-family model decoding together (lmpipe.engine.loop's model runner)."""

    joins = True
    compiled = False  # rows that join and leave change the batch's shapes: each would compile anew

    def __init__(self, model: Any, capacity: int, prefixes: PrefixCache | None = None, pad: int = 0):
        self.fast = fast_model(model)
        self.capacity = capacity
        self.prefixes = prefixes
        self.pad = pad
        self.cache: KVCache | None = None
        self.order: list[Slot] = []  # order[i] holds row i of the cache
        self.adapted = stack_of(model) is not None  # rows pick LoRA adapters: each step names their slots

    @property
    def device(self) -> Any:
        return self.fast.device

    def _fit(self, width: int) -> KVCache:
        width = rounded_width(width)
        if self.cache is None:
            self.cache = self.fast.cache(self.capacity, width)
        elif self.cache.width < width:
            self.cache = self.cache.grown(width)
        return self.cache

    def prefill(self, prompts: Sequence[Sequence[int]], room: int, every: bool = False,
                adapters: Sequence[int | None] | None = None) -> tuple[list[Slot], Tensor]:
        """With `every` (one prompt), its logits after each token [1, len, vocab]: it is computed
        whole, not from a cached prefix. `adapters`: each prompt's LoRA adapter slot (None: the
        model's default)."""
        row, n = len(self.order), len(prompts)
        if row + n > self.capacity:
            raise RuntimeError("no free row")
        default = self.fast.default_slot
        chosen = [default if a is None else a for a in adapters or [None] * n]
        slots = [Slot(row + i, a) for i, a in enumerate(chosen)]
        if n == 1:
            logits = self._prefill_one(row, list(prompts[0]), room, every, chosen[0])
        else:
            ids, mask = left_pad(prompts, self.pad, self.fast.device)
            cache = self._fit(ids.shape[1] + room)
            logits = prefill(self.fast, cache, slice(row, row + n), ids, mask, slots=self._slots(slots))
        self.order += slots
        return slots, logits

    def _slots(self, rows: Sequence[Slot]) -> Any:
        """The LoRA slots of `rows` as the fast path takes them: one int when they share one (its
        adapter's matrices alone), else a tensor of one per row; None where the model has no adapters."""
        if not self.adapted:
            return None
        first = rows[0].adapter
        if all(r.adapter == first for r in rows):
            return first
        import torch

        return torch.tensor([r.adapter for r in rows], dtype=torch.long, device=self.fast.device)

    def _prefill_one(self, row: int, prompt: list[int], room: int, every: bool = False,
                     adapter: int = 0) -> Tensor:
        import torch

        cache = self._fit(len(prompt) + room)
        ids = torch.tensor([prompt], dtype=torch.long, device=self.fast.device)
        slots = adapter if self.adapted else None
        stored, shared = self.prefixes.longest(prompt, adapter) if self.prefixes is not None and not every \
            else (None, 0)
        if self.prefixes is not None and not every:
            self.prefixes.counts.queries += len(prompt)
            self.prefixes.counts.hits += shared if shared >= MIN_SHARED else 0
        if shared >= MIN_SHARED and stored is not None:  # a stored prefix shares them
            cache.load_prefix(row, *stored, shared)
            rest = ids[:, shared:]
            logits = prefill(self.fast, cache, slice(row, row + 1), rest, torch.ones_like(rest), start=shared,
                             slots=slots)
        else:
            logits = prefill(self.fast, cache, slice(row, row + 1), ids, torch.ones_like(ids), every=every, slots=slots)
        if self.prefixes is not None:
            self.prefixes.add(prompt, *cache.prefix(row, len(prompt)), slot=adapter)
        return logits

    def step(self, handles: Sequence[Slot], tokens: Sequence[int]) -> Tensor:
        """One decode step for `handles`' rows; contiguous runs of rows step together (all of
        them at once, unless rows decoding speculatively sit between them)."""
        import torch

        device = self.fast.device
        rows = [h.index for h in handles]
        if rows == list(range(len(rows))):
            chosen = torch.tensor(list(tokens), dtype=torch.long, device=device)
            return step(self.fast, self._kv, slice(0, len(rows)), chosen, slots=self._slots(handles))
        order = sorted(range(len(rows)), key=rows.__getitem__)
        out: list[Any] = [None] * len(rows)
        run: list[int] = []
        for k, position in enumerate(order):
            run.append(position)
            last = k + 1 == len(order) or rows[order[k + 1]] != rows[position] + 1
            if last:
                chosen = torch.tensor([tokens[p] for p in run], dtype=torch.long, device=device)
                first = rows[run[0]]
                logits = step(self.fast, self._kv, slice(first, first + len(run)), chosen,
                              slots=self._slots([handles[p] for p in run]))
                for j, p in enumerate(run):
                    out[p] = logits[j]
                run = []
        return torch.stack(out)

    @property
    def _kv(self) -> KVCache:
        """The cache, once the first prefill has allocated it (every other call follows one)."""
        assert self.cache is not None, "no row was prefilled"
        return self.cache

    def filled(self, handle: Slot) -> int:
        """Columns the row holds."""
        return int(self._kv.fill[handle.index])

    def extend(self, handle: Slot, tokens: Sequence[int]) -> Tensor:
        """Feed the row several tokens in one pass: the logits after each [len(tokens), vocab].
        The row must hold no padding (it was prefilled alone)."""
        import torch

        i = handle.index
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.fast.device)
        return prefill(self.fast, self._kv, slice(i, i + 1), ids, torch.ones_like(ids), start=self.filled(handle),
                       every=True, slots=handle.adapter if self.adapted else None)[0]

    def truncate(self, handle: Slot, length: int) -> None:
        """Forget the row's columns from `length` on (rejected speculative tokens)."""
        self._kv.truncate(handle.index, length)

    def release(self, handle: Slot) -> None:
        i, last = handle.index, len(self.order) - 1
        if i != last:
            self._kv.move(last, i)
            moved = self.order[last]
            moved.index = i
            self.order[i] = moved
        self.order.pop()

    def reset(self) -> None:
        self.order = []
