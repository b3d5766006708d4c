"""Token log-probabilities in OpenAI's two formats, from the engine's Token events.

Chat (`logprobs: true, top_logprobs: k`): `{"content": [{"token", "logprob", "bytes",
"top_logprobs": [...k]}]}`. Completions (`logprobs: k`), the legacy format: parallel lists
`tokens`, `token_logprobs`, `top_logprobs` (a dict of the k likeliest and the chosen token) and
`text_offset` (where each token starts in the choice's text). The numbers are the model's own
distribution (before temperature and the other sampling settings), as vLLM reports by default;
-inf is written as -9999.0, as vLLM does, for JSON has no infinity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..engine.events import Token

FLOOR = -9999.0


def _finite(logprob: float | None) -> float:
    assert logprob is not None  # reported tokens carry their log-probability
    return max(logprob, FLOOR)


def token_text(tokenizer: Any, token: Token) -> str:
    """The token's own text (a generated Token's `text` is what became printable at it)."""
    text: str = tokenizer.decode([token.id])
    return text


def chat_entries(tokenizer: Any, tokens: Sequence[Token], top: int) -> list[dict[str, Any]]:
    out = []
    for t in tokens:
        text = token_text(tokenizer, t)
        out.append({"token": text, "logprob": _finite(t.logprob), "bytes": list(text.encode()),
                    "top_logprobs": [{"token": x.token, "logprob": _finite(x.logprob), "bytes": list(x.token.encode())}
                                     for x in t.top[:top]]})
    return out


def legacy(tokenizer: Any, tokens: Sequence[Token], offset: int = 0) -> tuple[dict[str, Any], int]:
    """The legacy format for `tokens`, the first starting at `offset` in the text, and where the
    next one would start. A prompt's first token (echo) has no log-probability: null, as in vLLM."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t in tokens:
        text = token_text(tokenizer, t)
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        if t.logprob is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            continue
        out["token_logprobs"].append(_finite(t.logprob))
        alternatives = {x.token: _finite(x.logprob) for x in t.top}
        alternatives.setdefault(text, _finite(t.logprob))
        out["top_logprobs"].append(alternatives)
    return out, offset
