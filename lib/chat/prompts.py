"""From a record to prompt token ids: chat template for chat models, plain text with --raw.

A message's content is a string or a list of OpenAI content parts: `text` parts, and `image_url`
parts ({"type": "image_url", "image_url": {"url": ...}}) that only a vision-language model takes
(lmpipe.backends.vision_prompts reads their images; here they are only named).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import RecordError, UsageError
from .tools import template_knows_tools, with_instructions

ROLES = {"system", "user", "assistant", "tool", "developer"}
EFFORTS = ("low", "medium", "high")
# What a template is handed by the renderer itself: never a caller's template variable.
RESERVED_VARIABLES = frozenset({"messages", "conversation", "tools", "documents", "chat_template",
                                "add_generation_prompt",
                                "continue_final_message", "tokenize", "sanitize_control_tokens", "padding",
                                "truncation", "max_length", "return_tensors", "return_dict",
                                "return_assistant_tokens_mask", "tokenizer_kwargs"})


@dataclass(frozen=True)
class PromptSettings:
    field: str = "text"
    system: str | None = None
    raw: bool = False
    prefix: str = ""  # the answer starts with this text (--prefix); the model continues it
    chat_template: str | None = None  # the template's source, in place of the model's (--chat-template)
    think: bool | None = None  # the template's enable_thinking (--think/--no-think); None: its default
    reasoning_effort: str | None = None  # the template's reasoning_effort (gpt-oss's low, medium, high)
    template_kwargs: tuple[tuple[str, Any], ...] = ()  # more template variables (lm-serve's chat_template_kwargs)

    def __post_init__(self) -> None:
        if self.reasoning_effort is not None and self.reasoning_effort not in EFFORTS:
            raise UsageError(f"--reasoning-effort must be one of {', '.join(EFFORTS)}")


def template_variables(settings: PromptSettings, template: Any) -> dict[str, Any]:
    """What the chat template is handed besides the messages: `enable_thinking` (Qwen3, DeepSeek,
    Granite) and `reasoning_effort` (gpt-oss) as asked, then the caller's own keys, which win, as
    vLLM merges chat_template_kwargs. A template that takes reasoning_effort and not
    enable_thinking (gpt-oss, which always reasons) gets effort "low" for --no-think."""
    out: dict[str, Any] = {}
    if settings.think is not None:
        out["enable_thinking"] = settings.think
        source = template if isinstance(template, str) else ""
        if not settings.think and "reasoning_effort" in source and "enable_thinking" not in source:
            out["reasoning_effort"] = "low"
    if settings.reasoning_effort is not None:
        out["reasoning_effort"] = settings.reasoning_effort
    out.update(settings.template_kwargs)
    return out


def is_template_name(value: str) -> bool:
    """A --chat-template value that names one of a model's templates (tool_use, default, ...), not a
    template's source."""
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", value))


def with_template(settings: PromptSettings, tokenizer: Any) -> PromptSettings:
    """`settings` with a --chat-template NAME replaced by the model's template of that name."""
    name = settings.chat_template
    if name is None or not is_template_name(name):
        return settings
    named = tokenizer.chat_template if isinstance(tokenizer.chat_template, dict) else {}
    if name not in named:
        listed = ", ".join(sorted(named)) if named else "it has no named templates"
        raise UsageError(f"--chat-template {name}: no such file, nor a template of this model ({listed})")
    return replace(settings, chat_template=named[name])


def template_manifest(settings: PromptSettings) -> dict[str, Any]:
    """The manifest's part: the --chat-template's sha256 and the thinking asked for, where given."""
    out: dict[str, Any] = {}
    if settings.chat_template is not None:
        out["chat_template_sha256"] = hashlib.sha256(settings.chat_template.encode("utf-8")).hexdigest()
    if settings.think is not None:
        out["think"] = settings.think
    if settings.reasoning_effort is not None:
        out["reasoning_effort"] = settings.reasoning_effort
    if settings.template_kwargs:
        out["chat_template_kwargs"] = dict(settings.template_kwargs)
    return out


def effective_template(tokenizer: Any, settings: PromptSettings) -> Any:
    """The template the prompt is rendered with: --chat-template's, else the model's."""
    return settings.chat_template if settings.chat_template is not None else tokenizer.chat_template


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


def prompt_ids(record: dict[str, Any], tokenizer: Any, settings: PromptSettings,
               tools: Sequence[Any] = ()) -> list[int]:
    """Token ids of the prompt for one record; `tools` (lmpipe.chat.tools.Tool) are offered to the model."""
    template = effective_template(tokenizer, settings)
    if settings.raw or template is None:
        if "messages" in record and settings.field not in record:
            raise RecordError("`messages` needs a chat model; this one has no chat template (or --raw is set)")
        text = text_of(record, settings.field)
        if settings.system:
            text = f"{settings.system}\n\n{text}"
        if tools:
            text = with_instructions([], list(tools))[0]["content"] + "\n\n" + text
        return list(tokenizer(text + settings.prefix)["input_ids"])
    messages, extra = text_messages(messages_of(record, settings)), template_variables(settings, template)
    if settings.chat_template is not None:
        extra["chat_template"] = settings.chat_template
    if tools and template_knows_tools(template):
        extra["tools"] = [t.openai() for t in tools]
    elif tools:
        messages = with_instructions(messages, list(tools))
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
    except TemplateError as exc:  # a template's own error (raise_exception, a bad variable)
        raise RecordError(f"the chat template failed: {exc.message or type(exc).__name__}") from None
    # The template already holds the special tokens it wants.
    return list(tokenizer(text + settings.prefix, add_special_tokens=False)["input_ids"])
