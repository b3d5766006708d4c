"""lm-serve's HTTP face: an OpenAI-compatible API over the engine (starlette, run by uvicorn).

/v1/chat/completions, /v1/completions (both with `stream` as server-sent events), /v1/models
and /health. Structured output (`response_format`, lmpipe's `regex`, `choice`, `prefix`) and
function calling (`tools`, `tool_choice`) come from lmpipe.serve.structured. Every response to a request that cannot be served is JSON
`{"error": {"message", "type", "code"}}`: 400 for a malformed request, 503 with Retry-After
when the queue is full, 500 if generation itself failed. Besides OpenAI's `usage`, responses
carry llama.cpp-style `timings` and an `lmpipe` object (stats and manifest parts) from which
the tools rebuild the very records they write in-process.
"""

from __future__ import annotations

import asyncio
import queue
import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from ..chat.prompts import PromptSettings, messages_of, prompt_ids
from ..engine.events import Completion, Token
from ..engine.sampling import Sampling
from ..engine.scheduler import GenerationRequest, Scheduler
from ..errors import LmpipeError, RecordError
from .embeddings import embeddings_route
from .refusals import BadRequest, error_response
from .structured import Asked, FormatError, asked, tool_calls

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def _json(data: Any, status: int = 200):
    from starlette.responses import Response

    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _typed(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise BadRequest(f"`{name}` must be {' or '.join(k.__name__ for k in kinds)}", "invalid_type")
    return value


def sampling_of(body: dict[str, Any]) -> Sampling:
    stop = _typed(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) for s in stop):
        raise BadRequest("`stop` must be a string or a list of strings", "invalid_type")
    if _typed(body, "n", (int,), 1) != 1:
        raise BadRequest("only n=1 is supported", "unsupported")
    try:
        return Sampling(
            temperature=float(_typed(body, "temperature", (int, float), 1.0)),
            top_p=float(_typed(body, "top_p", (int, float), 1.0)),
            top_k=_typed(body, "top_k", (int,), 0),
            repetition_penalty=float(_typed(body, "repetition_penalty", (int, float), 1.0)),
            max_new_tokens=_typed(body, "max_tokens", (int,), _typed(body, "max_completion_tokens", (int,), 256)),
            seed=_typed(body, "seed", (int,), None),
            stop=tuple(stop),
        ).with_seed()
    except LmpipeError as exc:
        raise BadRequest(str(exc).replace("--", "").replace("-", "_"), "invalid_value") from None


@dataclass
class PreparedRequest:
    ids: list[int]
    sampling: Sampling
    stream: bool
    include_usage: bool
    asked: Asked


def chat_ids(engine: Scheduler, body: dict[str, Any], asked: Asked) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", "invalid_type")
    tok, tools = engine.tokenizer, asked.plan.tools
    try:
        if tok.chat_template is not None:
            return prompt_ids({"messages": messages}, tok, PromptSettings(prefix=asked.prefix), tools)
        # No chat template: the tools' own rule, an optional system line and one user text.
        messages_of({"messages": messages}, PromptSettings())
        roles = [m["role"] for m in messages]
        if roles not in (["user"], ["system", "user"]):
            raise BadRequest("this model has no chat template: send one user message (and a system one)")
        system = messages[0]["content"] if roles[0] == "system" else None
        settings = PromptSettings(system=system, raw=True, prefix=asked.prefix)
        return prompt_ids({"text": messages[-1]["content"]}, tok, settings, tools)
    except RecordError as exc:
        raise BadRequest(str(exc), "invalid_messages") from None


def completion_ids(engine: Scheduler, body: dict[str, Any], asked: Asked) -> list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, str):  # as lm-generate --raw: tool instructions first, the prefix last
        return prompt_ids({"text": prompt}, engine.tokenizer, PromptSettings(raw=True, prefix=asked.prefix),
                          asked.plan.tools)
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        if max(prompt) >= len(engine.tokenizer) or min(prompt) < 0:
            raise BadRequest("`prompt` token ids out of the vocabulary", "invalid_value")
        if asked.prefix or asked.plan.tools:
            raise BadRequest("`prefix` and `tools` need a text prompt", "unsupported")
        return prompt
    raise BadRequest("`prompt` must be a string or a list of token ids", "invalid_type")


async def prepare(engine: Scheduler, request: Any, chat: bool) -> PreparedRequest:
    from starlette.concurrency import run_in_threadpool

    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "invalid_json")
    model = body.get("model")
    if model is not None and model not in (engine.model_id, engine.ref.name):
        raise BadRequest(f"unknown model {model!r}; this server has {engine.model_id!r}", "model_not_found")
    sampling = sampling_of(body)
    try:
        wanted = asked(body)
    except FormatError as exc:
        raise BadRequest(str(exc), exc.code) from None
    ids = chat_ids(engine, body, wanted) if chat else completion_ids(engine, body, wanted)
    context = await run_in_threadpool(engine.context_length)
    if context and len(ids) >= context:
        raise BadRequest(f"prompt is {len(ids)} tokens; the model's context is {context}", "context_length_exceeded")
    if context:
        sampling = Sampling(**{**sampling.__dict__, "max_new_tokens": min(sampling.max_new_tokens, context - len(ids))})
    options = _typed(body, "stream_options", (dict,), {})
    return PreparedRequest(ids, sampling, bool(_typed(body, "stream", (bool,), False)), bool(options.get("include_usage")),
                    wanted)


def usage(c: Completion) -> dict[str, int]:
    return {"prompt_tokens": c.input_tokens, "completion_tokens": c.output_tokens,
            "total_tokens": c.input_tokens + c.output_tokens}


def timings(c: Completion) -> dict[str, Any]:
    """llama.cpp server's names, so tools written for it read them too."""
    return {"prompt_n": c.input_tokens, "prompt_ms": round(c.ttft_s * 1000, 3), "predicted_n": c.output_tokens,
            "predicted_ms": round((c.total_s - c.ttft_s) * 1000, 3), "predicted_per_second": c.tokens_per_s}


def lmpipe_part(engine: Scheduler, c: Completion, sampling: Sampling) -> dict[str, Any]:
    from ..backends.generate import stats
    from ..records.manifest import versions

    lm = engine.lm
    return {
        "stats": stats(c, None),
        "identity": lm.identity if lm else {},
        "sampling": sampling.manifest(),
        "device": lm.device if lm else None,
        "dtype": lm.dtype if lm else None,
        "versions": versions(),
    }


class Session:
    """One request's life: queued, streamed back, cancelled when its client goes away."""

    def __init__(self, engine: Scheduler, prepared: PreparedRequest):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.job = GenerationRequest(prepared.ids, prepared.sampling, self._emit, prepared.asked.plan.grammar)

    def _emit(self, event: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def __aiter__(self):
        while True:
            event = await self.events.get()
            if isinstance(event, Exception):
                raise event
            yield event
            if isinstance(event, Completion):
                return


def _sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


def create_app(engine: Scheduler):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def models(request: Request):
        return _json({"object": "list", "data": [
            {"id": engine.model_id, "object": "model", "created": 0, "owned_by": "lmpipe", "loaded": engine.loaded}]})

    async def health(request: Request):
        return _json({"status": "ok", "model": engine.model_id, "loaded": engine.loaded,
                      "queued": engine.jobs.qsize()})

    def handler(chat: bool):
        async def serve(request: Request):
            try:
                prepared = await prepare(engine, request, chat)
                session = Session(engine, prepared)
                try:
                    engine.submit(session.job)
                except queue.Full:
                    return error_response(503, "the server is busy: its queue is full", "queue_full",
                                          {"Retry-After": "1"})
                ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
                if prepared.stream:
                    return StreamingResponse(stream(engine, session, prepared, ident, chat),
                                             media_type="text/event-stream")
                try:
                    async for event in session:
                        if isinstance(event, Completion):
                            return _json(whole(engine, event, prepared, ident, chat))
                finally:
                    session.job.cancelled.set()
                raise RuntimeError("generation ended without a completion")
            except BadRequest as exc:
                return error_response(exc.status, str(exc), exc.code)
            except Exception as exc:  # the server answers and carries on
                return error_response(500, f"{type(exc).__name__}: {exc}", "generation_failed")

        return serve

    routes = [
        Route("/v1/models", models),
        Route("/health", health),
        Route("/v1/chat/completions", handler(True), methods=["POST"]),
        Route("/v1/completions", handler(False), methods=["POST"]),
        embeddings_route(engine),
    ]
    return Starlette(routes=routes)


def answer(prepared: PreparedRequest, c: Completion) -> tuple[str, list[dict[str, Any]] | None, str]:
    """The answer's text (with the prefix), its tool calls (or None) and OpenAI's finish_reason."""
    calls = tool_calls(prepared.asked, c.text)
    return prepared.asked.prefix + c.text, calls, "tool_calls" if calls else FINISH[c.finish_reason]


def whole(engine: Scheduler, c: Completion, prepared: PreparedRequest, ident: str, chat: bool) -> dict[str, Any]:
    text, calls, finish = answer(prepared, c)
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": None if calls else text}
        if calls:
            choice["message"]["tool_calls"] = calls
    else:  # lmpipe's extension: the call's text stays in `text`
        choice["text"] = text
        if calls:
            choice["tool_calls"] = calls
    return {
        "id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
        "model": engine.model_id, "choices": [choice], "usage": usage(c), "timings": timings(c),
        "lmpipe": lmpipe_part(engine, c, prepared.sampling),
    }


async def stream(engine: Scheduler, session: Session, prepared: PreparedRequest, ident: str, chat: bool):
    """Server-sent events, OpenAI's chunk format; [DONE] last. A client that leaves cancels its job.

    With tools the answer is held back and sent whole at the end, as text or as one tool_calls delta."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    created = int(time.time())
    held = bool(prepared.asked.plan.tools)

    def chunk(text: str | None, finish: str | None, first: bool = False,
              calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            delta: dict[str, Any] = {"role": "assistant"} if first else {}
            if text is not None:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
            if calls:
                choice["tool_calls"] = calls
        return {"id": ident, "object": kind, "created": created, "model": engine.model_id, "choices": [choice]}

    try:
        if chat:
            yield _sse(chunk("", None, first=True))
        if prepared.asked.prefix and not held:
            yield _sse(chunk(prepared.asked.prefix, None))
        try:
            async for event in session:
                if isinstance(event, Token) and event.text and not held:
                    yield _sse(chunk(event.text, None))
                elif isinstance(event, Completion):
                    text, calls, finish = answer(prepared, event)
                    if held:
                        yield _sse(chunk(None if calls and chat else text, None, calls=calls))
                    last = chunk(None, finish)
                    last.update(timings=timings(event), lmpipe=lmpipe_part(engine, event, prepared.sampling))
                    if not prepared.include_usage:
                        last["usage"] = usage(event)
                    yield _sse(last)
                    if prepared.include_usage:
                        yield _sse({"id": ident, "object": kind, "created": created, "model": engine.model_id,
                                    "choices": [], "usage": usage(event)})
        except Exception as exc:
            yield _sse({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error",
                                  "code": "generation_failed"}})
        yield b"data: [DONE]\n\n"
    finally:
        session.job.cancelled.set()
