"""Reasoning models think inside <think>…</think>; split that out of the answer (whole, or as it streams)."""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def opens_thinking(prompt: str) -> bool:
    """Whether a rendered prompt leaves a think block open for the model (DeepSeek-R1, Qwen3-Thinking)."""
    return prompt.rstrip().endswith(OPEN)


def split_reasoning(text: str, opened: bool = False) -> tuple[str | None, str]:
    """(reasoning, answer). Templates that open <think> in the prompt leave only the close tag;
    `opened` (the prompt did, opens_thinking): a reply never closed is all reasoning."""
    end = text.find(CLOSE)
    if end < 0 and opened:
        return text.strip(), ""
    if end < 0:
        start = text.find(OPEN)
        if start < 0:
            return None, text
        return text[start + len(OPEN):].strip(), text[:start].strip()  # never closed: all thinking
    start = text.find(OPEN)
    begin = start + len(OPEN) if 0 <= start < end else 0
    return text[begin:end].strip(), text[end + len(CLOSE):].lstrip()


class ReasoningStream:
    """Streamed text cut into reasoning and answer pieces as it comes, so a terminal can show the
    thinking apart while it streams. A tag split across tokens is held back until it is whole.
    (A template that opens <think> in the prompt streams its thinking as answer: only the
    finished reply, through split_reasoning, knows.)"""

    def __init__(self, thinking: bool = False) -> None:
        """`thinking`: the prompt opened the think block (opens_thinking)."""
        self.thinking = thinking
        self.held = ""

    def feed(self, text: str) -> list[tuple[bool, str]]:
        """(is_reasoning, text) pieces of what can be shown now."""
        pieces: list[tuple[bool, str]] = []
        text = self.held + text
        self.held = ""
        while text:
            tag = CLOSE if self.thinking else OPEN
            at = text.find(tag)
            if at >= 0:
                pieces.append((self.thinking, text[:at]))
                self.thinking = not self.thinking
                text = text[at + len(tag):]
                continue
            keep = next((n for n in range(len(tag) - 1, 0, -1) if text.endswith(tag[:n])), 0)
            self.held = text[len(text) - keep:] if keep else ""
            pieces.append((self.thinking, text[:len(text) - keep]))
            break
        return [(r, t) for r, t in pieces if t]

    def flush(self) -> list[tuple[bool, str]]:
        """What was held back at the end of the reply."""
        held, self.held = self.held, ""
        return [(self.thinking, held)] if held else []
