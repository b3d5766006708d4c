"""How the generation loop drives the model: the KV cache strategy and the per-token step.

lmpipe.engine.loop owns the loop (pick a token, report it, stop); this module owns the two calls a
left-padded batch makes into the model, `prefill(ids)` and `step(chosen)`, gpt-fast style when
asked: "fast" runs lmpipe's own forward for the families it knows (lmpipe.models.fastpath); "auto"
runs it where it can and falls back to "dynamic" (said once on stderr); "dynamic" grows
transformers' DynamicCache per token; "static" allocates a StaticCache once for prompt + new tokens so every step has
the same shapes, and may
compile that step. `StaticBatch` is the loop's model runner over them: a batch admitted whole (rows
that join and leave between steps are lmpipe.engine.batching's).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..models.adapters import Lora, stack_of
from ..models.fastpath import FastDecoder, fast_model, unsupported
from ..models.loading import to_stderr
from .multimodal import PER_TOKEN, batch_inputs

if TYPE_CHECKING:
    from torch import Tensor

    from ..models.fastpath import FastDecoder

CACHES = ("auto", "fast", "dynamic", "static")


@dataclass(frozen=True)
class Decoding:
    """How the loop drives the model, gpt-fast style when asked.

    cache "fast" is lmpipe's own forward pass with a KV cache allocated once (the families of
    lmpipe.models.fastpath; others are refused); "auto" is "fast" where it can run, else
    "dynamic" ("static" with `compile`); "dynamic" grows transformers' KV cache token by
    token; "static" allocates transformers' StaticCache once for prompt + max_new_tokens, so
    every decode step has the same shapes; `compile` compiles the one-token step with
    torch.compile (fast or static cache; the first step of each new shape pays the compile).
    Greedy float32 output is the same token for token whichever cache is chosen; a compiled
    step fuses operations, so its numbers, and rarely its tokens, may differ. `draft` names a
    model (optionally quantized) that proposes `draft_tokens` tokens per pass of the model
    (speculative decoding, greedy).
    """

    cache: str = "auto"
    compile: bool = False
    draft: str | None = None  # a draft model for speculative decoding (lmpipe.engine.speculative)
    draft_quantize: str | None = None
    draft_tokens: int = 4

    def __post_init__(self) -> None:
        if self.cache not in CACHES:
            raise UsageError(f"--cache must be one of {', '.join(CACHES)}")
        if self.draft_tokens < 1:
            raise UsageError("--draft-tokens must be at least 1")
        if self.compile and self.cache == "dynamic":
            raise UsageError("--compile needs --cache fast or static (fixed shapes)")


def positions(mask: Tensor) -> Tensor:
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def forward(model: Any, ids: Tensor, mask: Tensor, pos: Tensor, cache: Any, keep_last: bool,
            cache_position: Tensor | None = None, every: bool = False, extras: dict[str, Any] | None = None) -> Tensor:
    """The last position's logits [B, vocab]; with `every`, every position's [B, T, vocab].
    `extras`: more model inputs (a vision-language model's pixels, lmpipe.engine.multimodal)."""
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if keep_last and not every else {}
    if cache_position is not None:
        kwargs["cache_position"] = cache_position
    kwargs.update(extras or {})
    import torch

    kwargs[cache_keyword(model.__class__)] = cache
    # no_grad, not inference_mode: a static cache allocated outside it is updated in place here.
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
    logits: Tensor = out.logits.float() if every else out.logits[:, -1, :].float()
    return logits


@cache
def cache_keyword(model_class: Any) -> str:
    """transformers 5.24 renames `past_key_values` to `cache`, model by model (the old name warns)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


class _Dynamic:
    """The KV cache grows by one column per token; the mask grows with it."""

    def __init__(self, model: Any, mask: Tensor, max_new_tokens: int):
        from transformers import DynamicCache

        self.model, self.mask = model, mask
        self.cache = DynamicCache(config=model.config)
        self.keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    def prefill(self, ids: Tensor, every: bool = False) -> Tensor:
        return forward(self.model, ids, self.mask, positions(self.mask), self.cache, self.keep, every=every)

    def step(self, chosen: Tensor) -> Tensor:
        self.mask = torch_cat_ones(self.mask)
        return forward(self.model, chosen[:, None], self.mask, positions(self.mask)[:, -1:], self.cache, self.keep)


class _Static:
    """The KV cache allocated once for prompt + new tokens: every step has the same shapes.

    The mask is as wide as the cache from the start (left padding 0, the rest 1); the model's
    causal mask, built from `cache_position`, hides the columns not written yet.
    """

    def __init__(self, model: Any, mask: Tensor, max_new_tokens: int, compiled: bool = False):
        import torch
        from transformers import StaticCache

        self.model, self.width = model, mask.shape[1]
        total = self.width + max_new_tokens
        self.cache = StaticCache(config=model.config, max_cache_len=total)
        self.mask = torch.cat([mask, mask.new_ones((mask.shape[0], max_new_tokens))], dim=-1)
        self.next_pos = mask.long().sum(-1, keepdim=True)  # each row's next position id
        self.cursor = torch.tensor([self.width], device=mask.device)
        self.keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.decode = _compiled_static_step() if compiled else decode_one

    def prefill(self, ids: Tensor, every: bool = False) -> Tensor:
        import torch

        mask = self.mask[:, : self.width]
        position = torch.arange(self.width, device=ids.device)
        return forward(self.model, ids, mask, positions(mask), self.cache, self.keep, position, every)

    def step(self, chosen: Tensor) -> Tensor:
        logits = self.decode(self.model, chosen[:, None], self.mask, self.next_pos, self.cache, self.cursor)
        self.next_pos += 1
        self.cursor += 1
        return logits


def decode_one(model: Any, ids: Tensor, mask: Tensor, pos: Tensor, cache: Any, cursor: Tensor) -> Tensor:
    """One token through the model with a static cache; the step torch.compile may compile."""
    return forward(model, ids, mask, pos, cache, True, cursor)


@cache
def _compiled_static_step() -> Callable[..., Tensor]:
    import torch

    return torch.compile(decode_one, fullgraph=False, dynamic=False)


def torch_cat_ones(mask: Tensor) -> Tensor:
    import torch

    return torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)


class ImageRows:
    """The decoder of a batch with images: transformers' forward with a dynamic cache, the
    processor's inputs at prefill, plain steps after (lmpipe.engine.multimodal says how)."""

    def __init__(self, model: Any, inputs: dict[str, Any], device: Any):
        from transformers import DynamicCache

        self.model = model
        moved = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        self.ids, self.mask = moved.pop("input_ids"), moved.pop("attention_mask")
        if (pixels := moved.get("pixel_values")) is not None and pixels.is_floating_point():
            moved["pixel_values"] = pixels.to(model.dtype)
        self.extras = moved
        self.cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        self.positions = model._prepare_position_ids_for_generation(
            self.ids, {"attention_mask": self.mask, "cache": self.cache, **moved})

    def prefill(self, ids: Tensor | None, every: bool = False) -> Tensor:
        return forward(self.model, self.ids, self.mask, self.positions, self.cache, True, every=every,
                       extras=self.extras)

    def step(self, chosen: Tensor) -> Tensor:
        import torch

        self.mask = torch_cat_ones(self.mask)
        self.positions = self.positions[..., -1:] + 1
        step: dict[str, Any] = {}
        for key in PER_TOKEN:
            if (value := self.extras.get(key)) is not None:
                grown = value[:, -1:] if key == "token_type_ids" else torch.zeros_like(value[:, -1:])
                self.extras[key] = torch.cat([value, grown], dim=-1)
                step[key] = grown
        return forward(self.model, chosen[:, None], self.mask, self.positions, self.cache, True, extras=step)


def uses_fast_path(model: Any, decoding: Decoding) -> bool:
    return decoding.cache in ("auto", "fast") and unsupported(model) is None


def settled(decoding: Decoding, model: Any, notify: Callable[[str], None] = to_stderr) -> Decoding:
    """The Decoding that will run `model`, its cache named ("auto" decided), for the manifest.

    `--cache fast` for a model the fast path cannot run is refused with the reason; "auto" falls
    back to transformers' forward and says so once (here, where the model is loaded).
    """
    if decoding.cache not in ("auto", "fast"):
        return decoding
    why = unsupported(model)
    if why is None:
        return replace(decoding, cache="fast")
    if decoding.cache == "fast":
        raise UsageError(f"--cache fast: {why}")
    fallback = "static" if decoding.compile else "dynamic"
    if not getattr(model, "_lmpipe_fallback_said", False):  # once per loaded model, however many tasks use it
        notify(f"lmpipe: {why}; running transformers' forward (--cache {fallback})")
        model._lmpipe_fallback_said = True
    return replace(decoding, cache=fallback)


def decoder(model: Any, mask: Tensor, max_new_tokens: int, decoding: Decoding,
            slots: Tensor | int | None = None) -> _Dynamic | _Static | FastDecoder:
    """`slots`: the rows' LoRA adapter slots, on the fast path (None: the model's default)."""
    if uses_fast_path(model, decoding):
        return FastDecoder(fast_model(model), mask, max_new_tokens, decoding.compile, slots)
    if decoding.cache == "static":
        return _Static(model, mask, max_new_tokens, decoding.compile)
    return _Dynamic(model, mask, max_new_tokens)


def left_pad(prompts: Sequence[Sequence[int]], pad: int, device: Any) -> tuple[Tensor, Tensor]:
    """A batch of prompts as transformers pads it for decoder-only models: on the left, with its mask."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids.to(device), mask.to(device)


class StaticBatch:
    """The loop's model runner over one left-padded batch (transformers' own forward with a dynamic or
    static cache, or the compiled fast step, whose shapes must not change).

    Its rows are admitted together and cannot join later; a finished row is fed padding until
    the last one is released, and then the next batch may be admitted. With a `processor` (a
    vision-language model), rows that carry images are prefilled as lmpipe.engine.multimodal says.
    """

    joins = False

    def __init__(self, model: Any, decoding: Decoding, capacity: int, device: Any, pad: int, processor: Any = None):
        self.model, self.decoding, self.capacity, self.device, self.pad = model, decoding, capacity, device, pad
        self.processor = processor
        self.run: Any = None  # the batch's decoder while it runs
        self.live: list[bool] = []

    @property
    def compiled(self) -> bool:
        return self.decoding.compile

    def prefill(self, prompts: Sequence[Sequence[int]], room: int, every: bool = False,
                inputs: Sequence[Any] | None = None,
                adapters: Sequence[int | None] | None = None) -> tuple[list[int], Tensor]:
        """`adapters`: each row's LoRA adapter slot (None: the model's default), held for the batch."""
        if self.run is not None:
            raise RuntimeError("a static batch admits its rows together")
        slots = self._adapt(adapters)
        if inputs and any(x is not None for x in inputs):
            if self.processor is None or any(x is None for x in inputs):
                raise RuntimeError("rows with images need the model's processor, and every row of the batch its inputs")
            run: Any = ImageRows(self.model, batch_inputs(self.processor, inputs), self.device)
            logits = run.prefill(None, every)
            self.run, self.live = run, [True] * len(prompts)
            return list(range(len(prompts))), logits
        ids, mask = left_pad(prompts, self.pad, self.device)
        run = decoder(self.model, mask, room, self.decoding, slots)
        logits = run.prefill(ids, every)
        self.run, self.live = run, [True] * len(prompts)
        return list(range(len(prompts))), logits

    def step(self, handles: Sequence[int], tokens: Sequence[int]) -> Tensor:
        import torch

        everyone = list(handles) == list(range(len(self.live)))
        if everyone:
            chosen = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
        else:
            chosen = torch.full((len(self.live),), self.pad, dtype=torch.long, device=self.device)
            chosen[list(handles)] = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
        logits: Tensor = self.run.step(chosen)
        return logits if everyone else logits[list(handles)]

    def release(self, handle: int) -> None:
        self.live[handle] = False
        if not any(self.live):
            self.reset()

    def _adapt(self, adapters: Sequence[int | None] | None) -> Any:
        """The batch's LoRA slots [B] where the model has adapters and a row names one, set for
        transformers' forward (the adapters' hooks read them) and returned for the fast path's."""
        stack = stack_of(self.model)
        if stack is None or adapters is None:
            return None
        import torch

        slots = torch.tensor([stack.default if a is None else a for a in adapters], dtype=torch.long,
                             device=self.device)
        stack.rows = Lora.mask(slots, stack.count)
        return slots

    def reset(self) -> None:
        self.run, self.live = None, []
        if (stack := stack_of(self.model)) is not None:
            stack.rows = None
