"""Sentence splitting and token-bounded packing, lossless: the pieces always join back to the text.

`sentences(text)` cuts after sentence-ending punctuation (and at blank lines), each sentence
keeping the whitespace that follows it. `pack(text, count, limit)` groups whole sentences into
pieces of at most `limit` tokens by the caller's own counter; a sentence too long for one piece
is cut between words, and a word too long between characters. Nothing is dropped or reordered.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# End of a sentence: . ! ? … and CJK full stops, with closing quotes or brackets, then space;
# or a blank line. The whitespace stays with the sentence before it.
_END = re.compile(r"(?:[.!?…]+[\"'”’)\]]*|[。！？]+)(?:\s+|$)|\n\s*\n\s*")
_WORD = re.compile(r"\S+\s*|\s+")


def sentences(text: str) -> list[str]:
    """The sentences of text, in order; "".join(sentences(text)) == text."""
    out, start = [], 0
    for m in _END.finditer(text):
        if m.end() > start:
            out.append(text[start:m.end()])
            start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


def pack(text: str, count: Callable[[str], int], limit: int) -> list[str]:
    """Pieces of text, each of at most `limit` tokens by `count`, joining back to text exactly."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if count(text) <= limit:
        return [text]
    return _greedy(sentences(text), count, limit, _split_sentence)


def _greedy(units: list[str], count: Callable[[str], int], limit: int,
            too_long: Callable[[str, Callable[[str], int], int], list[str]]) -> list[str]:
    pieces: list[str] = []
    current = ""
    for unit in units:
        if current and count(current + unit) <= limit:
            current += unit
            continue
        if current:
            pieces.append(current)
        if count(unit) <= limit:
            current = unit
        else:
            *whole, current = too_long(unit, count, limit)
            pieces.extend(whole)
    if current:
        pieces.append(current)
    return pieces


def _split_sentence(sentence: str, count: Callable[[str], int], limit: int) -> list[str]:
    return _greedy(_WORD.findall(sentence), count, limit, _split_word)


def _split_word(word: str, count: Callable[[str], int], limit: int) -> list[str]:
    pieces = []
    while word:
        lo, hi = 1, len(word)  # the longest prefix that fits (at least one character)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(word[:mid]) <= limit:
                lo = mid
            else:
                hi = mid - 1
        pieces.append(word[:lo])
        word = word[lo:]
    return pieces
