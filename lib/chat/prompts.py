"""From a record to prompt token ids: chat template for chat models, plain text with --raw."""

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
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content", ""), str):
                raise RecordError(f"bad message {m!r}: need a role ({', '.join(sorted(ROLES))}) and string content")
    else:
        messages = [{"role": "user", "content": text_of(record, settings.field)}]
    if settings.system and messages[0].get("role") != "system":
        messages = [{"role": "system", "content": settings.system}, *messages]
    return messages


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
    messages, extra = messages_of(record, settings), {}
    if tools and template_knows_tools(tokenizer):
        extra["tools"] = [t.openai() for t in tools]
    elif tools:
        messages = with_instructions(messages, list(tools))
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **extra)
    # The template already holds the special tokens it wants.
    return list(tokenizer(text + settings.prefix, add_special_tokens=False)["input_ids"])
