"""Prompts with images in the one loop: the processor's inputs at prefill, plain steps after.

A row's `Request.inputs` is an `ImagePrompt`: its text as the processor's chat template wrote it
(image placeholders in it), its images, and the processor's output for it alone. A batch's rows are
processed together, as `processor(text=[...], images=[[...], ...], padding=True)` pads them, so
the batch is what transformers' own `generate(**processor(...))` would be given. Then, as
`generate` does it for image-text-to-text models:

- the prefill forward gets every extra input the processor made (pixel_values, image_sizes,
  image_grid_thw, pixel_attention_mask, mm_token_type_ids, ...);
- position ids come from the model's own `_prepare_position_ids_for_generation` (from the mask,
  or Qwen2-VL's M-RoPE positions with their rope deltas), and grow by one per step;
- decode steps feed the token, the grown mask and positions, and only the per-token inputs
  (token_type_ids repeat their last value, mm_token_type_ids are 0: text), never the pixels.

lmpipe.engine.decoding.ImageRows runs those forwards; this module makes their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PER_TOKEN = ("token_type_ids", "mm_token_type_ids")  # one value per prompt token: they grow at each step


@dataclass(frozen=True, eq=False)
class ImagePrompt:
    """A prompt for a vision-language model, as its processor takes it."""

    text: str
    images: tuple[Any, ...]  # PIL images, in the order of their placeholders in `text`
    alone: Any  # the processor's output for this prompt alone (its ids, and its tensors when it runs alone)

    @property
    def ids(self) -> list[int]:
        ids: list[int] = self.alone["input_ids"][0].tolist()
        return ids


def image_prompt(processor: Any, text: str, images: Sequence[Any]) -> ImagePrompt:
    """Process one prompt (its token ids hold each image's placeholder tokens, expanded)."""
    alone = processor(text=[text], images=[list(images)] if images else None, return_tensors="pt")
    return ImagePrompt(text, tuple(images), alone)


def batch_inputs(processor: Any, prompts: Sequence[ImagePrompt]) -> dict[str, Any]:
    """The model inputs of rows admitted together: left-padded as the processor pads a batch."""
    if len(prompts) == 1:
        return dict(prompts[0].alone)
    images = [list(p.images) for p in prompts]
    out = processor(text=[p.text for p in prompts], images=images if any(images) else None, padding=True,
                    padding_side="left", return_tensors="pt")
    for i, p in enumerate(prompts):  # a row's ids are what its stats, history and context check counted
        row = out["input_ids"][i][out["attention_mask"][i].bool()].tolist()
        if row != p.ids:
            raise RuntimeError(f"the processor gave row {i} other ids in a batch than alone")
    return dict(out)
