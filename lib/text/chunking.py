"""Token-bounded, overlapping chunks of a text that reassemble into it exactly.

A chunk is a character span [start, end) of the text covering a run of tokens. Chunk k+1
starts `overlap` tokens before chunk k ends. Span edges sit at token starts, so the space
between two tokens belongs to the chunk before it, and every chunk, tokenized again on its
own, is checked against the limit (re-tokenizing a span can differ from slicing the tokens;
a chunk that comes out over is shortened by a token until it fits). Reassembly:
text = chunk[0] + chunk[1][end[0] - start[1]:] + chunk[2][end[1] - start[2]:] + ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    start: int  # character offsets in the source text
    end: int
    tokens: int  # tokens of text[start:end] tokenized on its own


Encode = Callable[[str], Sequence[tuple[int, int]]]  # text -> one (start, end) character span per token


def chunk(text: str, encode: Encode, max_tokens: int, overlap: int = 0) -> list[Chunk]:
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1")
    if not 0 <= overlap < max_tokens:
        raise ValueError("overlap must be at least 0 and less than max_tokens")
    offsets = encode(text)
    n = len(offsets)
    if n <= max_tokens:
        return [Chunk(0, len(text), n)]
    # Where each token starts (made non-decreasing), with the text's two ends.
    bounds = [0] * (n + 1)
    for t in range(1, n):
        bounds[t] = max(bounds[t - 1], offsets[t][0])
    bounds[n] = len(text)
    chunks: list[Chunk] = []
    s = 0
    while True:
        shortest = s + 1
        while shortest < n and bounds[shortest] == bounds[s]:  # never an empty span
            shortest += 1
        e = max(min(s + max_tokens, n), shortest)
        count = len(encode(text[bounds[s]:bounds[e]]))
        while count > max_tokens and e > shortest:
            e -= 1
            count = len(encode(text[bounds[s]:bounds[e]]))
        chunks.append(Chunk(bounds[s], bounds[e], count))
        if e >= n:
            return chunks
        s = max(e - overlap, s + 1)
        while s < e and bounds[s] <= chunks[-1].start:  # each chunk starts further on
            s += 1


def reassemble(texts: Sequence[str], starts: Sequence[int], ends: Sequence[int]) -> str:
    """The source text back from its chunks (in order)."""
    out = texts[0] if texts else ""
    for i in range(1, len(texts)):
        out += texts[i][ends[i - 1] - starts[i]:]
    return out
