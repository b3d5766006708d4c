"""lm-serve's answers as typed models: OpenAI's response and chunk objects (vLLM's protocol.py).

Each is a frozen dataclass whose fields are in the order clients have always read them, for
answers are compared as bytes. A field named in `OMITTED_WHEN_NONE` is left out of the JSON when
it is None (a chat delta's `content` after a tool call, a chunk's `usage` until the last one);
every other None is written as null. `dumps` writes any of them, and plain JSON values besides.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

import orjson

Json = dict[str, Any]  # a part passed through as it is: log-probabilities, tool calls, lmpipe's stats


@dataclass(frozen=True)
class ApiObject:
    """Base of the response objects: which of its None fields the JSON leaves out."""

    OMITTED_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    def as_json(self) -> Json:
        return {f.name: value for f in fields(self)
                if (value := getattr(self, f.name)) is not None or f.name not in self.OMITTED_WHEN_NONE}


@dataclass(frozen=True)
class Usage(ApiObject):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt, completion, prompt + completion)


@dataclass(frozen=True)
class Timings(ApiObject):
    """llama.cpp server's names, so tools written for it read them too."""

    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    predicted_per_second: float


@dataclass(frozen=True)
class ChatLogprobs(ApiObject):
    content: list[Json]


@dataclass(frozen=True)
class ChatMessage(ApiObject):
    """A whole chat answer: `content` is null when it calls a tool."""

    OMITTED_WHEN_NONE = frozenset({"reasoning_content", "tool_calls"})

    role: str
    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[Json] | None = None


@dataclass(frozen=True)
class ChatDelta(ApiObject):
    """What one chunk adds to a chat answer: the role in the first, then reasoning, text or tool calls."""

    OMITTED_WHEN_NONE = frozenset({"role", "reasoning_content", "content", "tool_calls"})

    role: str | None = None
    reasoning_content: str | None = None
    content: str | None = None
    tool_calls: list[Json] | None = None


@dataclass(frozen=True)
class ChatChoice(ApiObject):
    index: int
    finish_reason: str | None
    logprobs: ChatLogprobs | None
    message: ChatMessage


@dataclass(frozen=True)
class ChatChunkChoice(ApiObject):
    index: int
    finish_reason: str | None
    logprobs: ChatLogprobs | None
    delta: ChatDelta


@dataclass(frozen=True)
class CompletionChoice(ApiObject):
    """A legacy completion's choice, whole or a chunk's piece of it (the same shape). `tool_calls`
    is lmpipe's: the call's text stays in `text`."""

    OMITTED_WHEN_NONE = frozenset({"tool_calls"})

    index: int
    finish_reason: str | None
    logprobs: Json | None
    text: str
    tool_calls: list[Json] | None = None


Choice = ChatChoice | CompletionChoice
ChunkChoice = ChatChunkChoice | CompletionChoice


@dataclass(frozen=True)
class WholeResponse(ApiObject):
    """A whole answer: `chat.completion` or `text_completion`. `timings` and `lmpipe` are its
    first choice's (lmpipe's own part: stats and manifest, from which the tools rebuild records)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    timings: Timings
    lmpipe: Json


@dataclass(frozen=True)
class StreamChunk(ApiObject):
    """One server-sent event of a stream, with one choice's piece; a choice's last chunk carries its
    timings and lmpipe part (and its usage, unless the stream ends with a chunk of usage only)."""

    OMITTED_WHEN_NONE = frozenset({"timings", "lmpipe", "usage"})

    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    timings: Timings | None = None
    lmpipe: Json | None = None
    usage: Usage | None = None


@dataclass(frozen=True)
class EmbeddingUsage(ApiObject):
    prompt_tokens: int
    total_tokens: int


@dataclass(frozen=True)
class Embedding(ApiObject):
    object: str
    index: int
    embedding: Any  # a float32 array (written as floats) or a base64 string


@dataclass(frozen=True)
class EmbeddingResponse(ApiObject):
    object: str
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def _as_json(value: Any) -> Any:
    if isinstance(value, ApiObject):
        return value.as_json()
    raise TypeError(f"{type(value).__name__} is not JSON")


def dumps(value: Any) -> bytes:
    """JSON bytes of a response model (or of plain JSON values), numpy arrays written as lists."""
    return orjson.dumps(value, default=_as_json, option=orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_SERIALIZE_NUMPY)
