"""Speculative decoding: a small draft model guesses the next tokens, the model checks them in one pass.

Decoding one token reads every weight of the model; checking k+1 tokens in one forward pass
costs little more on a machine bound by memory bandwidth. So a cheaper draft model (a
smaller one with the same tokenizer, or the same model quantized to int4) proposes `k`
tokens greedily, the model scores all of them at once, and the longest run it agrees with is
kept, plus the model's own token after it: each round yields between 1 and k+1 tokens for one
pass of the model. Under greedy decoding the tokens are the model's own (a pass over several
tokens rounds differently from one over a single token, so a near-tie may rarely resolve the
other way, as with transformers' assisted generation). Rejected tokens are dropped from both
KV caches. Greedy only, one sequence at a time, on the fast path (lmpipe.models.fastpath) for both.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

from ..errors import UsageError
from ..models.fastpath import fast_model, prefill, step, unsupported
from .generation import Event, RowState, advance_to_end, eos_ids
from .sampling import Sampling


def load_draft(decoding: Any, lm: Any, sampling: Sampling, notify: Any = lambda m: None) -> Any | None:
    """The draft model `decoding` names, loaded beside `lm` and checked, or None without one."""
    if not decoding.draft:
        return None
    from ..models.loading import ModelSettings, load

    draft = load(ModelSettings(decoding.draft, lm.device, lm.dtype, quantize=decoding.draft_quantize), notify)
    check_draft(lm.model, draft.model, lm.tokenizer, draft.tokenizer, sampling)
    return draft


def manifest_part(decoding: Any, draft: Any) -> dict[str, Any]:
    if draft is None:
        return {}
    return {"draft": {**draft.identity, "tokens": decoding.draft_tokens}}


def check_draft(model: Any, draft: Any, tokenizer: Any, draft_tokenizer: Any, sampling: Sampling) -> None:
    """A one-line reason the draft cannot serve, raised before any record is read."""
    for who, m in (("the model", model), ("the draft model", draft)):
        if (why := unsupported(m)) is not None:
            raise UsageError(f"--draft-model: {who}: {why}")
    if draft_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UsageError("--draft-model must share the model's tokenizer (its vocabulary differs)")
    if not sampling.greedy:
        raise UsageError("--draft-model decodes greedily: use --temperature 0")


def speculate(model: Any, draft: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], sampling: Sampling,
              k: int = 4) -> Iterator[Event]:
    """Like lmpipe.engine.generation.generate, greedy, with `draft` proposing `k` tokens per pass."""
    for r, prompt in enumerate(prompts):
        yield from _one(model, draft, tokenizer, r, list(prompt), sampling, k)


def _one(model: Any, draft: Any, tokenizer: Any, r: int, prompt: list[int], sampling: Sampling,
         k: int) -> Iterator[Event]:
    import torch

    target, helper = fast_model(model), fast_model(draft)
    width = len(prompt) + sampling.max_new_tokens + k + 1
    caches = target.cache(1, width), helper.cache(1, width)
    row, eos = RowState(len(prompt)), eos_ids(model, tokenizer)
    rows = slice(0, 1)
    ids = torch.tensor([prompt], dtype=torch.long, device=target.device)
    started = time.perf_counter()
    logits = prefill(target, caches[0], rows, ids, torch.ones_like(ids))
    prefill(helper, caches[1], rows, ids.to(helper.device), torch.ones_like(ids).to(helper.device))
    pending = [int(logits.argmax(-1))]  # chosen by the model, not yet in either cache
    while True:
        for token in pending:
            yield from advance_to_end(r, row, token, time.perf_counter() - started, tokenizer, eos, sampling)
            if row.finish:
                return
        pending = _round(target, helper, caches, pending[-1], min(k, sampling.max_new_tokens - len(row.times)))


def _round(target: Any, helper: Any, caches: tuple[Any, Any], last: int, k: int) -> list[int]:
    """One draft-and-check round after token `last`; the tokens it settles on."""
    import torch

    big, small = caches
    base = int(big.fill[0])  # columns both caches hold; `last` goes next
    guesses, token = [], last
    for _ in range(k):
        token = int(step(helper, small, slice(0, 1), torch.tensor([token], device=helper.device)).argmax(-1))
        guesses.append(token)
    run = torch.tensor([[last, *guesses]], device=target.device)
    checked = prefill(target, big, slice(0, 1), run, torch.ones_like(run), start=base, every=True)[0].argmax(-1)
    checked = checked.tolist()
    agreed = 0
    while agreed < k and guesses[agreed] == checked[agreed]:
        agreed += 1
    kept = base + 1 + agreed  # `last` and the agreed guesses
    big.truncate(0, kept)
    small.truncate(0, min(kept, int(small.fill[0])))
    if int(small.fill[0]) < kept:  # every guess agreed: the draft has not seen its own last one
        step(helper, small, slice(0, 1), torch.tensor([guesses[-1]], device=helper.device))
    return [*guesses[:agreed], checked[agreed]]
