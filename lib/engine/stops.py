"""Stop strings: where to cut, and how much streamed text is safe to show before we know."""

from __future__ import annotations


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int:
    """Index of the earliest stop string in text[start:], or -1."""
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else -1


def safe_length(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be shown: all of it but a tail that may still grow into a stop
    string, and but a trailing replacement character (half of a multi-byte character)."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, end), 0, -1):
            if text.endswith(stop[:n], 0, end):
                held = max(held, n)
                break
    return end - held
