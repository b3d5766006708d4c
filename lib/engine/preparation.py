"""One request preparation for every front door: what a request must pass, and how its settings
are made concrete, before it becomes a row of the loop.

lmpipe.api's Model (and so lm-dash), lm-generate's task (lmpipe.backends.generate) and lm-serve
(lmpipe.serve.app) all prepare through a `Preparation` of the loaded model, as vLLM's input
processor does for its front doors: the sampling settings are checked against the model's
vocabulary and given a concrete seed; a prompt the context cannot hold is `ContextExceeded`,
never cut; and each row's `max_new_tokens` is clamped to what the context leaves it (its answer
then ends with finish_reason "length"). Each door renders the one error its own way: an error
record, a one-line message, vLLM's 400.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..errors import RecordError
from ..models.loading import LoadedModel, context_length
from .sampling import Sampling


class ContextExceeded(RecordError):
    """A prompt the context cannot hold with room for one answer token."""

    def __init__(self, tokens: int, context: int) -> None:
        super().__init__(f"prompt is {tokens} tokens; the model's context is {context}")
        self.tokens = tokens
        self.context = context


def check_prompt(ids: Sequence[int], context: int | None) -> None:
    """A prompt the context cannot hold with room for one answer token is the record's error,
    never cut (`context`: lmpipe.models.loading.context_length; None: the model does not say)."""
    if context and len(ids) >= context:
        raise ContextExceeded(len(ids), context)


def within_context(sampling: Sampling, ids: Sequence[int], context: int | None) -> Sampling:
    """`sampling` with max_new_tokens clamped to the room the context leaves after `ids`."""
    if context is None or sampling.max_new_tokens <= context - len(ids):
        return sampling
    return replace(sampling, max_new_tokens=context - len(ids))


@dataclass(frozen=True)
class Preparation:
    """What requests to one loaded model are checked against: its context (None: the model does
    not say) and its vocabulary's size (the output head's rows)."""

    context: int | None
    vocabulary: int

    @classmethod
    def of(cls, lm: LoadedModel) -> Preparation:
        # The head's out_features, not its weight's shape: a quantized head has no .weight.
        return cls(context_length(lm), lm.model.get_output_embeddings().out_features)

    def sampling(self, sampling: Sampling) -> Sampling:
        """The settings every row of a request starts from: logit_bias within the vocabulary (a
        UsageError names the first token not), and a concrete seed, drawn now if none was given."""
        sampling.check_vocabulary(self.vocabulary)
        return sampling.with_seed()

    def check(self, ids: Sequence[int]) -> None:
        """ContextExceeded if the context cannot hold the prompt with room for one answer token."""
        check_prompt(ids, self.context)

    def row(self, ids: Sequence[int], sampling: Sampling) -> Sampling:
        """One prompt's settings: ContextExceeded if the context cannot hold it, else `sampling`
        with max_new_tokens clamped to the room left."""
        self.check(ids)
        return within_context(sampling, ids, self.context)


__all__ = ["ContextExceeded", "Preparation", "check_prompt", "within_context"]
