"""In-process generation: a batch of prompts through the one loop (lmpipe.engine.loop), as an iterator of events.

lm-generate's task, lm-bench, the translate/summarize tasks with chat models and the dashboard
call `generate`; lm-serve feeds the same loop request by request (lmpipe.engine.scheduler).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import UsageError
from .decoding import Decoding, StaticBatch, uses_fast_path
from .events import Completion, Event, Token, TopToken
from .loop import Loop, Request, eos_ids, pad_id
from .sampling import Sampling

__all__ = ["Completion", "Decoding", "Event", "Token", "TopToken", "eos_ids", "generate", "pad_id", "runner_for"]


def runner_for(model: Any, decoding: Decoding, rows: int, device: Any, pad: int, drafting: bool = False,
               prefixes: Any = None, processor: Any = None) -> Any:
    """The loop's model runner for `rows` rows: the fast path's rows (lmpipe.engine.batching) for models it
    knows and for speculative rows; else one left-padded batch over transformers' forward, or over
    the compiled fast step, whose shapes must not change (lmpipe.engine.decoding). lm-serve's rows, with
    a prompt cache (`prefixes`), join and leave a running batch, so they never compile (each
    batch size would compile anew). A vision-language model (its `processor` given) runs
    transformers' forward over a batch, its images in the prefill (lmpipe.engine.multimodal)."""
    if processor is not None:
        check_vision_decoding(decoding)
        return StaticBatch(model, decoding, rows, device, pad, processor)
    fast = uses_fast_path(model, decoding)
    if drafting or (fast and (prefixes is not None or not decoding.compile)):
        from .batching import FastRows

        return FastRows(model, rows, prefixes, pad)
    return StaticBatch(model, decoding, rows, device, pad)


def check_vision_decoding(decoding: Decoding) -> None:
    """A vision-language model decodes with transformers' dynamic cache: what asks for another way
    is refused, never quietly run the usual way (`--cache fast`, the default, falls back to
    dynamic for every model the fast path does not know)."""
    if decoding.cache == "static" or decoding.compile:
        raise UsageError("a vision-language model decodes with transformers' dynamic cache: drop "
                         + ("--compile" if decoding.compile else "--cache static"))


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    sampling: Sampling | Sequence[Sampling],
    top_probs: int = 0,
    device: str = "cpu",
    constraints: Sequence[Sequence[Any]] = (),
    decoding: Decoding = Decoding(),
    draft: Any = None,
    inputs: Sequence[Any] = (),
    processor: Any = None,
    adapters: Sequence[str | None] = (),
) -> Iterator[Event]:
    """Generate for every prompt (token ids) at once; yield Token events and one Completion per row.

    `sampling`: every row's, or one per prompt (lmpipe.engine.preparation.Preparation.row clamps
    each to the room its context leaves).

    `constraints`: per prompt, logits processors of its row alone that run before sampling's (a
    grammar mask; lmpipe.engine.constrain.row_constraints). `draft`: a loaded draft model; greedy,
    unconstrained rows then decode speculatively (lmpipe.engine.speculative), others as usual.
    `inputs`: per prompt, its lmpipe.engine.multimodal.ImagePrompt, for a vision-language model
    (`processor`: its processor). `adapters`: per prompt, the name of the LoRA adapter its row
    runs (ModelSettings.loras; None: the model's --adapter ones, if any); rows of different
    adapters share the batch.
    """
    eos = eos_ids(model, tokenizer)
    events: list[Event] = []
    policy = None
    if draft is not None:
        from .speculative import Draft

        policy = Draft(draft, decoding.draft_tokens)

    rows = [sampling] * len(prompts) if isinstance(sampling, Sampling) else list(sampling)
    slots: list[int | None] = [None] * len(prompts)
    if any(name is not None for name in adapters):
        from ..models.adapters import stack_of

        stack = stack_of(model)
        if stack is None:
            raise UsageError("the model has no LoRA adapters to choose from")
        slots = [stack.slot(name) for name in adapters]
    requests = [
        Request(list(ids), rows[r], events.append, row=r, constraints=tuple(constraints[r]) if constraints else (),
                top_probs=top_probs, draft=policy, inputs=inputs[r] if inputs else None, adapter=slots[r])
        for r, ids in enumerate(prompts)
    ]
    runner = runner_for(model, decoding, len(requests), device, pad_id(tokenizer, eos),
                        drafting=any(r.speculates for r in requests), processor=processor)
    loop = Loop(runner, tokenizer, eos)
    loop.admit(requests)
    yield from _drain(events)
    while loop.live:
        loop.step()
        yield from _drain(events)


def _drain(events: list[Event]) -> list[Event]:
    out = events[:]
    events.clear()
    return out
