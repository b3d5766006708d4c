"""Speculative decoding: a small draft model guesses the next tokens, the model checks them in one pass.

Decoding one token reads every weight of the model; checking k+1 tokens in one forward pass
costs little more on a machine bound by memory bandwidth. So a cheaper draft model (a
smaller one with the same tokenizer, or the same model quantized to int4) proposes `k`
tokens greedily, the model scores all of them at once, and the longest run it agrees with is
kept, plus the model's own token after it: each round yields between 1 and k+1 tokens for one
pass of the model. Under greedy decoding the tokens are the model's own (a pass over several
tokens rounds differently from one over a single token, so a near-tie may rarely resolve the
other way, as with transformers' assisted generation). Rejected tokens are dropped from both
KV caches. Greedy only, on the fast path (lmpipe.models.fastpath) for both.

It is a policy of a row in lmpipe.engine.loop's one loop, not a loop of its own: a row with a `Draft`
is prefilled alone into lmpipe.engine.batching's rows, and each step of the loop runs one round for it
(`Drafting.round`) beside the plain rows' batched step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..models.fastpath import FastModel, KVCache, fast_model, prefill, step, unsupported
from ..models.loading import ModelSettings, load
from .sampling import Sampling


def load_draft(decoding: Any, lm: Any, sampling: Sampling, notify: Any = lambda m: None) -> Any | None:
    """The draft model `decoding` names, loaded beside `lm` and checked, or None without one."""
    if not decoding.draft:
        return None
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


@dataclass(frozen=True)
class Draft:
    """A row's speculative decoding: `model` (loaded, on the fast path) proposes `tokens` tokens per pass."""

    model: Any
    tokens: int = 4

    @property
    def extra(self) -> int:
        """Columns a round may write into the model's row beyond the tokens it keeps."""
        return self.tokens + 1

    def start(self, prompt: Sequence[int], room: int) -> Drafting:
        """The draft's own cache for one row, holding the prompt."""
        import torch

        helper = fast_model(self.model)
        cache = helper.cache(1, len(prompt) + room)
        ids = torch.tensor([list(prompt)], dtype=torch.long, device=helper.device)
        prefill(helper, cache, slice(0, 1), ids, torch.ones_like(ids))
        return Drafting(helper, cache, self.tokens)


class Drafting:
    """One row's draft model state while it decodes speculatively."""

    def __init__(self, helper: FastModel, cache: KVCache, k: int):
        self.helper, self.cache, self.k = helper, cache, k

    def round(self, rows: Any, handle: Any, last: int, left: int) -> list[int]:
        """One draft-and-check round after token `last` (chosen by the model, in neither cache yet),
        with at most `left` new tokens to go; the tokens it settles on. `rows`: lmpipe.engine.batching.FastRows."""
        import torch

        helper, small = self.helper, self.cache
        base = rows.filled(handle)  # columns both caches hold; `last` goes next
        guesses, token = [], last
        for _ in range(min(self.k, left)):
            token = int(step(helper, small, slice(0, 1), torch.tensor([token], device=helper.device)).argmax(-1))
            guesses.append(token)
        checked = rows.extend(handle, [last, *guesses]).argmax(-1).tolist()
        agreed = 0
        while agreed < len(guesses) and guesses[agreed] == checked[agreed]:
            agreed += 1
        kept = base + 1 + agreed  # `last` and the agreed guesses
        rows.truncate(handle, kept)
        small.truncate(0, min(kept, int(small.fill[0])))
        if int(small.fill[0]) < kept:  # every guess agreed: the draft has not seen its own last one
            step(helper, small, slice(0, 1), torch.tensor([guesses[-1]], device=helper.device))
        return [*guesses[:agreed], checked[agreed]]
