"""Reasoning models think inside <think>…</think>; split that out of the answer."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def split_reasoning(text: str) -> tuple[str | None, str]:
    """(reasoning, answer). Templates that open <think> in the prompt leave only the close tag."""
    end = text.find(CLOSE)
    if end < 0:
        start = text.find(OPEN)
        if start < 0:
            return None, text
        return text[start + len(OPEN):].strip(), text[:start].strip()  # never closed: all thinking
    start = text.find(OPEN)
    begin = start + len(OPEN) if 0 <= start < end else 0
    return text[begin:end].strip(), text[end + len(CLOSE):].lstrip()
