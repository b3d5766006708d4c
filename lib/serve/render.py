"""lm-serve's answers, one renderer per endpoint: a chat, a legacy completion, embeddings.

A generation renderer turns a request's finished choices into one response (`whole()`), or its
events, as they come, into stream chunks (`start()`, `delta()` per event, `end()`); both go
through the same per-choice rendering, so a stream's chunks joined are its whole answer. The
models they build are lmpipe.serve.protocol's. A whole answer's `timings` and `lmpipe` part, and
the log's record of it, are its first choice's: `first()` says which that is.

Streams: with tools the answer is held back and sent whole at the end, as text or as one
tool_calls delta. A token's log-probabilities go with the chunk that shows its text (or the next
one, while its text is held back).
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from ..backends.embedding import encoded
from ..backends.generate import stats
from ..chat.reasoning import ReasoningStream, split_reasoning
from ..engine.events import Completion, ScoredPrompt, Token
from ..engine.sampling import Sampling
from ..engine.scheduler import Scheduler
from ..records.manifest import versions
from .logprobs import chat_entries, legacy
from .prompts import Prompt
from .protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    Choice,
    ChunkChoice,
    CompletionChoice,
    Embedding,
    EmbeddingResponse,
    EmbeddingUsage,
    Json,
    StreamChunk,
    Timings,
    Usage,
    WholeResponse,
)
from .structured import Asked, tool_calls

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # the engine's reasons, as OpenAI names them


class RenderedRequest(Protocol):
    """What a renderer reads of a request (lmpipe.serve.app's PreparedRequest)."""

    @property
    def prompts(self) -> Sequence[Prompt]: ...
    @property
    def n(self) -> int: ...  # choices per prompt; choice i answers prompt i // n
    @property
    def sampling(self) -> Sequence[Sampling]: ...  # per prompt
    @property
    def generates(self) -> bool: ...
    @property
    def include_usage(self) -> bool: ...
    @property
    def asked(self) -> Asked: ...
    @property
    def logprobs(self) -> int | None: ...
    @property
    def echo(self) -> bool: ...
    @property
    def include_reasoning(self) -> bool: ...


def usage(request: RenderedRequest, done: Mapping[int, Completion]) -> Usage:
    """Every prompt's tokens once (a prompt's `n` choices share it), every choice's tokens."""
    return Usage.of(sum(len(p.ids) for p in request.prompts), sum(c.output_tokens for c in done.values()))


def choice_usage(c: Completion) -> Usage:
    """One choice's own: its prompt's tokens and its answer's."""
    return Usage.of(c.input_tokens, c.output_tokens)


def timings(c: Completion) -> Timings:
    return Timings(c.input_tokens, round(c.ttft_s * 1000, 3), c.output_tokens, round((c.total_s - c.ttft_s) * 1000, 3),
                   c.tokens_per_s)


def scored(c: Completion, prompt: bool) -> list[Token]:
    """The tokens whose log-probabilities a choice reports: the prompt's (echo), the answer's,
    and the end-of-sequence token that ended it, as vLLM reports them."""
    return [*(c.prompt_tokens if prompt else ()), *c.tokens, *((c.end,) if c.end is not None else ())]


class Renderer(ABC):
    """One request's answer, whole or streamed; `ident` names it (the response's and the log's id)."""

    id_prefix: ClassVar[str]
    whole_object: ClassVar[str]
    chunk_object: ClassVar[str]

    def __init__(self, scheduler: Scheduler, request: RenderedRequest) -> None:
        self.scheduler, self.request = scheduler, request
        self.tokenizer: Any = scheduler.tokenizer
        self.ident = self.id_prefix + uuid.uuid4().hex[:24]
        self.created = 0  # a stream's, from its start
        self.held = bool(request.asked.plan.tools)
        self.pending: dict[int, list[Token]] = {}  # per choice, tokens whose log-probabilities are not sent yet
        self.shown: dict[int, int] = {}  # per choice, how much of its text was sent

    @property
    def choices(self) -> int:
        return len(self.request.prompts) * self.request.n

    def prompt(self, index: int) -> Prompt:
        return self.request.prompts[index // self.request.n]

    # What a choice says, whole or streamed

    def reasoned(self, index: int, c: Completion) -> tuple[str | None, str]:
        """(reasoning, answer) of choice `index`; only a chat has reasoning."""
        return None, c.text

    def answer(self, index: int, c: Completion) -> tuple[str, list[Json] | None, str]:
        """The answer's text (with the prefix; a chat's without its reasoning), its tool calls (or
        None) and OpenAI's finish_reason."""
        text = self.reasoned(index, c)[1]
        calls = tool_calls(self.request.asked, text)
        return self.request.asked.prefix + text, calls, "tool_calls" if calls else FINISH[c.finish_reason]

    def first(self, done: Mapping[int, Completion]) -> tuple[Completion, Json]:
        """The first choice finished and its lmpipe part: what a whole answer's `timings` and
        `lmpipe`, and the log's record, tell of the whole request."""
        index = min(done)
        return done[index], self.lmpipe_part(index, done[index])

    def lmpipe_part(self, index: int, c: Completion) -> Json:
        """lmpipe's own part of a choice: its stats and the manifest's parts (its prompt's sampling)."""
        lm = self.scheduler.lm
        return {
            "stats": stats(c, None),
            "identity": lm.identity if lm else {},
            "sampling": self.request.sampling[index // self.request.n].manifest(),
            "device": lm.device if lm else None,
            "dtype": lm.dtype if lm else None,
            "cache": self.scheduler.decoding.cache,
            "compile": self.scheduler.decoding.compile,
            "versions": versions(),
        }

    # Whole answers

    def whole(self, done: Mapping[int, Completion]) -> WholeResponse:
        """The answer once every choice finished."""
        first, part = self.first(done)
        return WholeResponse(self.ident, self.whole_object, int(time.time()), self.scheduler.model_id,
                             [self.choice(index, done[index]) for index in sorted(done)], usage(self.request, done),
                             timings(first), part)

    @abstractmethod
    def choice(self, index: int, c: Completion) -> Choice: ...

    # Streams

    def start(self) -> Iterator[StreamChunk]:
        """The chunks every choice opens with, before any event."""
        self.created = int(time.time())
        for index in range(self.choices):
            yield from map(self.chunk, self.opening(index))
            if self.request.asked.prefix and not self.held:
                yield self.chunk(self.piece(index, self.request.asked.prefix, None))

    def delta(self, index: int, event: Token | ScoredPrompt | Completion) -> Iterator[StreamChunk]:
        """The chunks one event of choice `index` adds: none, some text, or its end."""
        logprobs = self.request.logprobs is not None
        if isinstance(event, ScoredPrompt):  # echo with log-probabilities: the prompt, scored
            self.pending[index] = list(event.tokens)
            yield self.chunk(self.piece(index, self.prompt(index).text, None))
        elif isinstance(event, Token):
            if logprobs:
                self.pending.setdefault(index, []).append(event)
            if event.text and not self.held:
                self.shown[index] = self.shown.get(index, 0) + len(event.text)
                yield from map(self.chunk, self.pieces(index, event.text))
        else:
            text, calls, finish = self.answer(index, event)
            if event.end is not None and logprobs:
                self.pending.setdefault(index, []).append(event.end)
            if self.held:
                reasoning = self.reasoned(index, event)[0] if self.request.include_reasoning else None
                yield self.chunk(self.piece(index, text, None, calls=calls, reasoning=reasoning))
            else:  # what was held back at the end (half a character, half a tag)
                yield from map(self.chunk, self.pieces(index, event.text[self.shown.get(index, 0):], end=True))
            last = self.piece(index, None, finish)
            yield StreamChunk(self.ident, self.chunk_object, self.created, self.scheduler.model_id, [last],
                              timings(event), self.lmpipe_part(index, event),
                              None if self.request.include_usage else choice_usage(event))

    def end(self, done: Mapping[int, Completion]) -> Iterator[StreamChunk]:
        """With `stream_options.include_usage`, a last chunk with the usage of every choice."""
        if self.request.include_usage:
            yield StreamChunk(self.ident, self.chunk_object, self.created, self.scheduler.model_id, [],
                              usage=usage(self.request, done))

    def chunk(self, piece: ChunkChoice) -> StreamChunk:
        return StreamChunk(self.ident, self.chunk_object, self.created, self.scheduler.model_id, [piece])

    @abstractmethod
    def opening(self, index: int) -> Iterator[ChunkChoice]:
        """What choice `index` shows before its first token."""

    @abstractmethod
    def pieces(self, index: int, text: str, end: bool = False) -> Iterator[ChunkChoice]:
        """Choice `index`'s new text as chunk choices (`end`: its last text)."""

    @abstractmethod
    def piece(self, index: int, text: str | None, finish: str | None, first: bool = False,
              calls: list[Json] | None = None, reasoning: str | None = None) -> ChunkChoice:
        """One chunk's piece of choice `index`, with the log-probabilities of the tokens pending."""


class ChatRenderer(Renderer):
    """/v1/chat/completions: a chat's reasoning (its <think> block) apart in `reasoning_content`
    (left out with `include_reasoning: false`); `content` is null when the answer calls a tool."""

    id_prefix = "chatcmpl-"
    whole_object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, scheduler: Scheduler, request: RenderedRequest) -> None:
        super().__init__(scheduler, request)
        self.thinking = [ReasoningStream(self.prompt(i).thinking) for i in range(self.choices)]

    def reasoned(self, index: int, c: Completion) -> tuple[str | None, str]:
        return split_reasoning(c.text, self.prompt(index).thinking)

    def logprobs(self, tokens: Sequence[Token]) -> ChatLogprobs | None:
        top = self.request.logprobs
        return ChatLogprobs(chat_entries(self.tokenizer, tokens, top)) if top is not None else None

    def choice(self, index: int, c: Completion) -> ChatChoice:
        text, calls, finish = self.answer(index, c)
        reasoning = self.reasoned(index, c)[0] if self.request.include_reasoning else None
        message = ChatMessage("assistant", None if calls else text, reasoning, calls or None)
        return ChatChoice(index, finish, self.logprobs(scored(c, False)), message)

    def opening(self, index: int) -> Iterator[ChunkChoice]:
        yield self.piece(index, "", None, first=True)

    def pieces(self, index: int, text: str, end: bool = False) -> Iterator[ChunkChoice]:
        """As reasoning and answer pieces."""
        stream = self.thinking[index]
        for is_reasoning, piece in [*stream.feed(text), *(stream.flush() if end else [])]:
            if not is_reasoning:
                yield self.piece(index, piece, None)
            elif self.request.include_reasoning:
                yield self.piece(index, None, None, reasoning=piece)

    def piece(self, index: int, text: str | None, finish: str | None, first: bool = False,
              calls: list[Json] | None = None, reasoning: str | None = None) -> ChatChunkChoice:
        tokens = self.pending.pop(index, [])
        delta = ChatDelta("assistant" if first else None, reasoning, None if calls else text,
                          [{"index": i, **call} for i, call in enumerate(calls)] if calls else None)
        return ChatChunkChoice(index, finish, self.logprobs(tokens) if tokens else None, delta)


class CompletionRenderer(Renderer):
    """/v1/completions: `echo` puts the prompt before the answer; the legacy log-probabilities'
    `text_offset` counts from the start of the choice's text."""

    id_prefix = "cmpl-"
    whole_object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, scheduler: Scheduler, request: RenderedRequest) -> None:
        super().__init__(scheduler, request)
        self.offsets: dict[int, int] = {}  # per choice, where its next legacy token starts in its text

    def choice(self, index: int, c: Completion) -> CompletionChoice:
        text, calls, finish = self.answer(index, c)
        echoed = self.prompt(index).text if self.request.echo else ""
        logprobs = None
        if self.request.logprobs is not None:
            logprobs = legacy(self.tokenizer, scored(c, self.request.echo))[0]
        return CompletionChoice(index, finish, logprobs, echoed + (text if self.request.generates else ""),
                                calls or None)

    def opening(self, index: int) -> Iterator[ChunkChoice]:
        if self.request.echo and self.request.logprobs is None:  # with log-probabilities, once the prompt is scored
            yield self.piece(index, self.prompt(index).text, None)

    def pieces(self, index: int, text: str, end: bool = False) -> Iterator[ChunkChoice]:
        if text:
            yield self.piece(index, text, None)

    def piece(self, index: int, text: str | None, finish: str | None, first: bool = False,
              calls: list[Json] | None = None, reasoning: str | None = None) -> CompletionChoice:
        tokens = self.pending.pop(index, [])
        logprobs = None
        if self.request.logprobs is not None and tokens:
            logprobs, self.offsets[index] = legacy(self.tokenizer, tokens, self.offsets.get(index, 0))
        return CompletionChoice(index, finish, logprobs, text or "", calls or None)


def renderer_for(scheduler: Scheduler, request: RenderedRequest, chat: bool) -> Renderer:
    return ChatRenderer(scheduler, request) if chat else CompletionRenderer(scheduler, request)


class EmbeddingRenderer:
    """/v1/embeddings: a whole answer only (OpenAI's embeddings do not stream)."""

    def __init__(self, model: str, encoding: str) -> None:
        self.model, self.encoding = model, encoding

    def whole(self, vectors: Sequence[Any], tokens: int) -> EmbeddingResponse:
        """`vectors` in the request's `encoding_format`; `tokens`: every input's."""
        return EmbeddingResponse("list", [Embedding("embedding", n, encoded(v, self.encoding))
                                          for n, v in enumerate(vectors)], self.model, EmbeddingUsage(tokens, tokens))
