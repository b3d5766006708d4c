"""A record (or a chat request) with images, as a vision-language model's prompt.

The images come from the command line (`--image`, every record), the record's `image`, `images` or
`image_b64` fields, and the `image_url` parts of its `messages`; all are read by
lmpipe.vision.images. The images named outside the messages go, in that order, before the text of
the first user message (where LLaVA, SmolVLM and Qwen2-VL put an image). The processor's chat
template writes the prompt, its processor expands each image's placeholder tokens
(lmpipe.engine.multimodal.image_prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..chat.prompts import PromptSettings, effective_template, image_messages, messages_of, template_variables, text_of
from ..engine.multimodal import ImagePrompt, image_prompt
from ..errors import RecordError
from ..vision.images import DEFAULT_MAX_PIXELS, read_image, record_images


@dataclass(frozen=True)
class ImageSource:
    """Where a prompt's images may come from, and how large they may be."""

    images: tuple[str, ...] = ()  # --image: paths (or data: URLs) given to every record
    field: str = "image"  # the record field naming images (besides `images` and `image_b64`)
    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_paths: bool = True  # lm-serve: only with --allow-local-images


def vision_prompt(record: dict[str, Any], processor: Any, settings: PromptSettings, source: ImageSource,
                  tools: Sequence[Any] = ()) -> ImagePrompt:
    """The record's prompt with its images, processed; a bad image or prompt is a RecordError."""
    named = [read_image(ref, source.max_pixels, source.allow_paths, "--image") for ref in source.images]
    named += record_images(record, source.field, source.max_pixels, source.allow_paths)
    template = effective_template(processor, settings) if hasattr(processor, "chat_template") else None
    if settings.raw or template is None:
        text = text_of(record, settings.field)  # the placeholders are the user's to write
        images = [i.image for i in named]
        return _processed(processor, (f"{settings.system}\n\n{text}" if settings.system else text) + settings.prefix,
                          images)
    messages = messages_of(record, settings)
    if tools:
        from ..chat.tools import with_instructions

        messages = with_instructions(messages, list(tools))
    converted, refs = image_messages(messages)
    if named:
        first = next((m for m in converted if m["role"] == "user"), None)
        if first is None:
            raise RecordError("images need a user message to go with")
        first["content"] = [{"type": "image"} for _ in named] + first["content"]
        # The images named outside the messages come first in the prompt, so first in the list.
    images = [i.image for i in named] + [read_image(ref, source.max_pixels, source.allow_paths, "image_url").image
                                         for ref in refs]
    try:
        extra = template_variables(settings, template)
        if settings.chat_template is not None:
            extra["chat_template"] = settings.chat_template
        text = processor.apply_chat_template(converted, add_generation_prompt=True, tokenize=False, **extra)
    except Exception as exc:  # a template's own error (jinja2's TemplateError, raise_exception)
        raise RecordError(f"the chat template failed: {_line(exc)}") from None
    return _processed(processor, text + settings.prefix, images)


def _processed(processor: Any, text: str, images: list[Any]) -> ImagePrompt:
    try:
        return image_prompt(processor, text, images)
    except (ValueError, TypeError, IndexError) as exc:  # the placeholders and images disagree, an odd size
        raise RecordError(f"the processor refused the prompt: {_line(exc)}") from None


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
