"""From a record to prompt token ids: chat template for chat models, plain text with --raw.

A message's content is a string or a list of OpenAI content parts: `text` parts, and `image_url`
parts ({"type": "image_url", "image_url": {"url": ...}}) that only a vision-language model takes
(lmpipe.backends.vision_prompts reads their images; here they are only named).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import RecordError

ROLES = {"system", "user", "assistant", "tool", "developer"}


@dataclass(frozen=True)
class PromptSettings:
    field: str = "text"
    system: str | None = None
    raw: bool = False
    prefix: str = ""  # the answer starts with this text (--prefix); the model continues it


def messages_of(record: dict[str, Any], settings: PromptSettings) -> list[dict[str, Any]]:
    """The conversation a record asks for: its `messages`, or its text field as one user turn."""
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise RecordError("`messages` must be a non-empty list of {role, content} objects")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not _content_ok(m.get("content", "")):
                raise RecordError(f"bad message {_short(m)}: need a role ({', '.join(sorted(ROLES))}) and string "
                                  "content (or a list of text and image_url parts)")
    else:
        messages = [{"role": "user", "content": text_of(record, settings.field)}]
    if settings.system and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": settings.system}, *messages]
    return messages


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _content_ok(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(part_of(p) is not None for p in content)


def part_of(part: Any) -> tuple[str, str] | None:
    """("text", its text) or ("image", its URL or path) for a valid content part, else None."""
    if not isinstance(part, dict):
        return None
    if part.get("type") == "text" and isinstance(part.get("text"), str):
        return "text", part["text"]
    if part.get("type") == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        return ("image", url) if isinstance(url, str) else None
    return None


def text_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with string content, for a model that reads text: text parts joined by newlines
    (as vLLM joins them); an image part is an error, this model takes no images."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = [part_of(p) for p in content]
            if any(kind == "image" for kind, _ in parts):  # type: ignore[misc]
                raise RecordError("this model takes no images (an image_url part); use a vision-language model")
            m = {**m, "content": "\n".join(text for _, text in parts)}  # type: ignore[misc]
        out.append(m)
    return out


def image_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Messages as a processor's chat template takes them (content parts `text` and `image`
    placeholders), and the images' URLs or paths in the order of their placeholders."""
    out, refs = [], []
    for m in messages:
        content = m.get("content")
        parts = [("text", content)] if isinstance(content, str) else [part_of(p) for p in content or []]
        converted = []
        for kind, value in parts:  # type: ignore[misc]
            if kind == "image":
                refs.append(value)
                converted.append({"type": "image"})
            else:
                converted.append({"type": "text", "text": value})
        out.append({**m, "content": converted})
    return out, refs


def text_of(record: dict[str, Any], field: str) -> str:
    if field not in record:
        raise RecordError(f"record has no {field!r} field (choose one with --field)")
    value = record[field]
    if not isinstance(value, str):
        raise RecordError(f"field {field!r} must be a string, not {type(value).__name__}")
    return value


def prompt_ids(record: dict[str, Any], tokenizer: Any, settings: PromptSettings, tools: Sequence[Any] = ()) -> list[int]:
    """Token ids of the prompt for one record; `tools` (lmpipe.chat.tools.Tool) are offered to the model."""
    from .tools import template_knows_tools, with_instructions

    if settings.raw or tokenizer.chat_template is None:
        if "messages" in record and settings.field not in record:
            raise RecordError("`messages` needs a chat model; this one has no chat template (or --raw is set)")
        text = text_of(record, settings.field)
        if settings.system:
            text = f"{settings.system}\n\n{text}"
        if tools:
            text = with_instructions([], list(tools))[0]["content"] + "\n\n" + text
        return list(tokenizer(text + settings.prefix)["input_ids"])
    messages, extra = text_messages(messages_of(record, settings)), {}
    if tools and template_knows_tools(tokenizer):
        extra["tools"] = [t.openai() for t in tools]
    elif tools:
        messages = with_instructions(messages, list(tools))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
    # The template already holds the special tokens it wants.
    return list(tokenizer(text + settings.prefix, add_special_tokens=False)["input_ids"])
