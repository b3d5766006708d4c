"""lm-serve's HTTP face: an OpenAI-compatible API over the engine (starlette, run by uvicorn).

/v1/chat/completions, /v1/completions (both with `stream` as server-sent events), /v1/models
and /health; vLLM's /tokenize and /detokenize (lmpipe.serve.tokens) and /metrics
(lmpipe.serve.metrics). Requests are read as vLLM's protocol reads them: every field is implemented or
refused by name (lmpipe.serve.fields); chat content parts are joined (lmpipe.serve.prompts);
`prompt` may be one or several texts or token-id lists; `n` choices per prompt run as rows of
one batch; log-probabilities come in OpenAI's chat and legacy formats (lmpipe.serve.logprobs),
with `echo` scoring the prompt itself. Structured output (`response_format`, lmpipe's `regex`,
`choice`, `prefix`) and function calling (`tools`, `tool_choice`) come from
lmpipe.serve.structured. Every response to a request that cannot be served is JSON
`{"error": {"message", "type", "code"}}`: 400 for a malformed request, 503 with Retry-After
when the queue is full, 500 if generation itself failed. Besides OpenAI's `usage`, responses
carry llama.cpp-style `timings` and an `lmpipe` object (stats and manifest parts) from which
the tools rebuild the very records they write in-process. The answers, whole or streamed, are
rendered by lmpipe.serve.render (one renderer per endpoint); the handlers here are module-level
functions handed the app's ServeState.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..chat.prompts import RESERVED_VARIABLES, PromptSettings, with_template
from ..engine.events import Completion, Event
from ..engine.loop import Request as LoopRequest  # starlette's Request is the HTTP one
from ..engine.preparation import ContextExceeded
from ..engine.sampling import Sampling
from ..engine.scheduler import Scheduler
from ..errors import LmpipeError
from ..models.processors import takes_images
from .embeddings import embedding_models, embeddings_route
from .fields import CHAT, COMPLETIONS, BadRequest, check_fields, error_response, read_body, typed, unsupported
from .metrics import ModelMetrics, ServerMetrics
from .prompts import ImagePolicy, ImageRules, Prompt, chat_prompt, completion_prompts
from .protocol import dumps
from .render import FINISH, Renderer, renderer_for, usage
from .requestlog import RequestLog, request_fields
from .roster import ModelRoster, ServedAdapter
from .structured import Asked, FormatError, asked
from .tokens import token_routes

CLIENT_CLOSED = 499  # an answer its client left before the end, streamed or not (nginx's status)
DEFAULT_MAX_TOKENS = 256
MAX_LOGPROBS = 20  # alternatives per token, as vLLM's default max_logprobs


def _json(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json")


def max_tokens_of(body: dict[str, Any], chat: bool, echo: bool) -> tuple[int, bool]:
    """How many tokens to generate (at least 1 for the engine), and whether to generate at all:
    `max_tokens: 0` scores the prompt only, which needs `echo`."""
    limit = typed(body, "max_completion_tokens", (int,), None) if chat else None
    name = "max_completion_tokens" if limit is not None else "max_tokens"
    limit = typed(body, "max_tokens", (int,), DEFAULT_MAX_TOKENS) if limit is None else limit
    if limit == 0 and echo:
        return 1, False
    if limit < 1:
        raise BadRequest(f"`{name}` must be at least 1" + ("" if chat else " (or 0 with `echo`)"), "invalid_value")
    return limit, True


def sampling_of(body: dict[str, Any], max_new_tokens: int) -> Sampling:
    stop = typed(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) for s in stop):
        raise BadRequest("`stop` must be a string or a list of strings", "invalid_type")
    try:
        return Sampling(
            temperature=float(typed(body, "temperature", (int, float), 1.0)),
            top_p=float(typed(body, "top_p", (int, float), 1.0)),
            top_k=typed(body, "top_k", (int,), 0),
            min_p=float(typed(body, "min_p", (int, float), 0.0)),
            repetition_penalty=float(typed(body, "repetition_penalty", (int, float), 1.0)),
            presence_penalty=float(typed(body, "presence_penalty", (int, float), 0.0)),
            frequency_penalty=float(typed(body, "frequency_penalty", (int, float), 0.0)),
            max_new_tokens=max_new_tokens,
            seed=typed(body, "seed", (int,), None),
            stop=tuple(stop),
            logit_bias=logit_bias_of(body),
            reasoning_budget=typed(body, "reasoning_budget", (int,), None),
        )  # its seed is drawn by the engine's preparation
    except LmpipeError as exc:
        raise BadRequest(str(exc).replace("--", "").replace("-", "_"), "invalid_value") from None


def logit_bias_of(body: dict[str, Any]) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias`: a map of token ids (as strings, JSON's keys) to biases in [-100, 100]."""
    bias = typed(body, "logit_bias", (dict,), {})
    out = []
    for token, value in bias.items():
        if not token.isdigit() or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadRequest("`logit_bias` maps token ids to numbers (from -100 to 100)", "invalid_type")
        if not -100 <= value <= 100:
            raise BadRequest(f"`logit_bias` {token}: {value} is not from -100 to 100", "invalid_value")
        out.append((int(token), float(value)))
    return tuple(out)


def template_of(body: dict[str, Any], scheduler: Scheduler) -> PromptSettings:
    """How a chat's template renders: the server's --chat-template for the model, and vLLM's
    `chat_template_kwargs` (any keys, handed to the template) and `reasoning_effort`."""
    kwargs = typed(body, "chat_template_kwargs", (dict,), {})
    for name in kwargs:
        if name in RESERVED_VARIABLES:
            raise BadRequest(f"`chat_template_kwargs.{name}`: set by the request itself, not a template variable",
                             "invalid_value")
    effort = typed(body, "reasoning_effort", (str,), None)
    try:
        template = PromptSettings(chat_template=scheduler.settings.chat_template, reasoning_effort=effort,
                                  template_kwargs=tuple(kwargs.items()))
    except LmpipeError as exc:
        raise BadRequest(str(exc).replace("--reasoning-effort", "`reasoning_effort`"), "invalid_value") from None
    try:
        return with_template(template, scheduler.tokenizer)
    except LmpipeError as exc:  # the server's own setting: not the request's fault
        raise BadRequest(str(exc), "invalid_chat_template", 500) from None


def logprobs_of(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives each token's log-probability comes with; None: no log-probabilities.
    Chat: `logprobs: true` with `top_logprobs: k`; completions: `logprobs: k`."""
    top: int | None
    if chat:
        top = typed(body, "top_logprobs", (int,), None)
        if not typed(body, "logprobs", (bool,), False):
            if top is not None:
                raise BadRequest("`top_logprobs` needs `logprobs: true`", "invalid_value")
            return None
        top = top or 0
        name = "top_logprobs"
    else:
        top = typed(body, "logprobs", (int,), None)
        name = "logprobs"
    if top is not None and not 0 <= top <= MAX_LOGPROBS:
        raise BadRequest(f"`{name}` must be from 0 to {MAX_LOGPROBS}", "invalid_value")
    return top


def streaming_of(body: dict[str, Any]) -> tuple[bool, bool]:
    """`stream`, and `stream_options.include_usage` (a last chunk with the usage of every choice)."""
    stream = typed(body, "stream", (bool,), False)
    options = typed(body, "stream_options", (dict,), {})
    if options and not stream:
        raise BadRequest("`stream_options` needs `stream: true`", "invalid_value")
    for name, value in options.items():
        if name != "include_usage" and value is not None:
            raise unsupported(f"stream_options.{name}", "not supported (include_usage is)")
    return stream, bool(typed(options, "include_usage", (bool,), False))


@dataclass
class PreparedRequest:
    prompts: list[Prompt]
    n: int  # choices per prompt; choice i answers prompt i // n
    sampling: list[Sampling]  # per prompt (its length bounded by the context left)
    generates: bool
    stream: bool
    include_usage: bool
    asked: Asked
    logprobs: int | None  # alternatives per token; None: no log-probabilities
    echo: bool
    chat: bool
    include_reasoning: bool = True  # a chat's reasoning goes in `reasoning_content` (vLLM's); False: left out

    def jobs(self, emit: Callable[[int, Any], None]) -> list[LoopRequest]:
        """One row per choice, in choice order: a prompt's `n` rows follow one another, so they
        are admitted into the same batch and share its prompt cache; sampled ones differ by seed."""
        out = []
        for p, (prompt, sampling) in enumerate(zip(self.prompts, self.sampling, strict=True)):
            assert sampling.seed is not None  # drawn when the request was read (with_seed)
            for j in range(self.n):
                own = replace(sampling, seed=(sampling.seed + j) % 2 ** 31) if j else sampling
                out.append(LoopRequest(
                    prompt.ids, own, partial(emit, p * self.n + j), grammar=self.asked.plan.grammar,
                    logprobs=self.logprobs is not None, top_probs=self.logprobs or 0,
                    echo=self.echo and self.logprobs is not None, generates=self.generates, inputs=prompt.inputs))
        return out


async def prepare(state: ServeState, request: Request, chat: bool) -> tuple[Scheduler, PreparedRequest]:
    """The request's model (its scheduler) and the request read, or BadRequest."""
    body = await read_body(request)
    check_fields(body, CHAT if chat else COMPLETIONS, "/v1/chat/completions" if chat else "/v1/completions")
    scheduler = await run_in_threadpool(state.roster.get, body.get("model"))
    echo = typed(body, "echo", (bool,), False)
    limit, generates = max_tokens_of(body, chat, echo)
    sampling = sampling_of(body, limit)
    n = typed(body, "n", (int,), 1)
    if not 1 <= n <= state.max_n:
        raise BadRequest(f"`n` must be from 1 to {state.max_n} (lm-serve --max-n)", "invalid_value")
    logprobs = logprobs_of(body, chat)
    stream, include_usage = streaming_of(body)
    try:  # a schema becomes a grammar here: off the event loop, as tokenizing is
        wanted = await run_in_threadpool(asked, body)
    except FormatError as exc:
        raise BadRequest(str(exc), exc.code) from None
    if chat:  # a vision-language model's chats go through its processor (images read off the event loop)
        lm = await run_in_threadpool(scheduler.model)
        images = ImageRules(lm.processor, state.images) if lm.processor is not None else None
        template = await run_in_threadpool(template_of, body, scheduler)
        prompts = [await run_in_threadpool(chat_prompt, scheduler.tokenizer, body, wanted, images, template)]
    else:
        prompts = await run_in_threadpool(completion_prompts, scheduler.tokenizer, body, wanted)
    if len(prompts) * n > scheduler.settings.max_queue:  # it could never be queued whole: not a busy server's 503
        raise BadRequest(f"{len(prompts)} prompt(s) × `n` {n} is more rows than this server queues "
                         f"({scheduler.settings.max_queue}, its --max-queue)", "invalid_value")
    preparation = await run_in_threadpool(scheduler.preparation)
    try:
        sampling = preparation.sampling(sampling)
    except LmpipeError as exc:
        raise BadRequest(str(exc).replace("--logit-bias", "`logit_bias`"), "invalid_value") from None
    try:
        rows = [preparation.row(prompt.ids, sampling) for prompt in prompts]
    except ContextExceeded as exc:  # vLLM's words, so clients that read them (to trim and retry) read ours
        raise BadRequest(f"This model's maximum context length is {exc.context} tokens. However, you requested "
                         f"{exc.tokens} tokens in the messages, Please reduce the length of the messages.",
                         "context_length_exceeded") from None
    include_reasoning = typed(body, "include_reasoning", (bool,), True)
    return scheduler, PreparedRequest(prompts, n, rows, generates, stream, include_usage, wanted, logprobs, echo, chat,
                                   include_reasoning)


class Session:
    """One request's life: its choices queued as rows, their events streamed back as
    (choice index, event), all cancelled when its client goes away; each finished row is
    counted in the metrics as it finishes, and rows left unfinished as aborted."""

    def __init__(self, prepared: PreparedRequest, metrics: ModelMetrics):
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.jobs = prepared.jobs(self._emit)
        self.metrics = metrics
        self.submitted = self.closed = False
        self.finished = 0  # rows counted finished; a row finishing as its client leaves is one or the other
        self.counting = threading.Lock()

    def _emit(self, index: int, event: Any) -> None:
        if isinstance(event, Completion):
            with self.counting:
                if not self.closed:
                    self.finished += 1
                    self.metrics.finished(event, FINISH[event.finish_reason])
        self.loop.call_soon_threadsafe(self.events.put_nowait, (index, event))

    def submit(self, scheduler: Scheduler) -> None:
        """Queue every choice's row, or none (queue.Full)."""
        try:
            for job in self.jobs:
                scheduler.submit(job)
        except queue.Full:
            self.cancel()
            raise
        self.submitted = True

    def cancel(self) -> None:
        """Called once the response is over, whole or cut short: rows not finished are aborted."""
        for job in self.jobs:
            job.cancelled.set()
        with self.counting:
            if self.submitted and not self.closed:
                self.metrics.aborted(len(self.jobs) - self.finished)
            self.closed = True

    async def __aiter__(self) -> AsyncIterator[tuple[int, Event]]:
        left = len(self.jobs)
        while left:
            index, event = await self.events.get()
            if isinstance(event, Exception):
                raise event
            yield index, event
            if isinstance(event, Completion):
                left -= 1


@dataclass
class Heard:
    """A request as the log records it: when it came, from whom, to which endpoint."""

    request: Any
    endpoint: str
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds")
                      .replace("+00:00", "Z"))
    raw: bytes = b""  # the body as sent

    async def read(self) -> None:
        try:
            self.raw = await self.request.body()  # starlette keeps it: prepare() reads it again
        except Exception:  # the client left while sending: prepare() answers that
            self.raw = b""

    @property
    def client(self) -> str | None:
        client = self.request.client
        return f"{client.host}:{client.port}" if client else None

    def head(self, status: int) -> dict[str, Any]:
        return {"time": self.time, "client": self.client, "endpoint": self.endpoint, "status": status}


def answered_record(heard: Heard, renderer: Renderer, done: dict[int, Completion], status: int) -> dict[str, Any]:
    """The log's record of an answer (the body was read: starlette keeps it)."""
    record = {"id": renderer.ident, **heard.head(status), **request_fields(heard.raw)}
    texts = [renderer.answer(i, done[i])[0] for i in sorted(done)]
    if status == CLIENT_CLOSED:
        record["error"] = "the client left before the answer was complete"
    if texts:
        record["generated"] = texts[0]
        if renderer.choices > 1:
            record["choices"] = texts
        part = renderer.first(done)[1]
        record["stats"] = part["stats"]
        record["usage"] = usage(renderer.request, done).as_json()
        record["manifest"] = {**part["identity"], "sampling": part["sampling"], "device": part["device"],
                              "dtype": part["dtype"], "cache": part["cache"], "compile": part["compile"],
                              "versions": part["versions"]}
    else:
        record["manifest"] = {"model": renderer.scheduler.model_id}
    return record


def failed_record(model_id: str, heard: Heard, status: int, message: str, code: str) -> dict[str, Any]:
    """The log's record of a request answered with an error: under the model it asked for (the
    default one when it named none, or before that was known), so lm-stats counts it there."""
    return {**heard.head(status), **request_fields(heard.raw), "error": message, "code": code,
            "manifest": {"model": model_id}}


def _sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else dumps(data)) + b"\n\n"


@dataclass
class ServeState:
    """What the handlers share, handed to each: the models, their metrics, the request log (None:
    none kept), where a chat's images may come from, and the most choices a request may ask for."""

    roster: ModelRoster
    metrics: ServerMetrics
    log: RequestLog | None = None
    images: ImagePolicy = ImagePolicy()
    max_n: int = 16

    async def write(self, record: dict[str, Any]) -> None:
        """On disk before the client has its answer."""
        if self.log is not None:
            await run_in_threadpool(self.log.write, record)


def create_app(roster: ModelRoster, log: RequestLog | None = None, images: ImagePolicy = ImagePolicy(),
               max_n: int = 16) -> Starlette:
    """The app over the models of `roster`; with `log`, every generation request and its answer or
    error is a record there; `images`: where a chat's images may come from, how many and how
    large; `max_n`: the most choices a request may ask for."""
    state = ServeState(roster, ServerMetrics(roster), log, images, max_n)
    routes = [
        Route("/v1/models", partial(models, state)),
        Route("/health", partial(health, state)),
        Route("/metrics", partial(metrics_page, state)),
        Route("/v1/chat/completions", partial(generation, state, True), methods=["POST"]),
        Route("/v1/completions", partial(generation, state, False), methods=["POST"]),
        embeddings_route(embedding_models(roster)),
        *token_routes(roster),
    ]
    return Starlette(routes=routes)


async def metrics_page(state: ServeState, request: Request) -> Response:
    page, kind = state.metrics.exposition()
    return Response(page, media_type=kind)


async def models(state: ServeState, request: Request) -> Response:
    return _json({"object": "list", "data": await run_in_threadpool(model_list, state.roster)})


async def health(state: ServeState, request: Request) -> Response:
    scheduler = state.roster.default
    return _json({"status": "ok", "model": scheduler.model_id, "loaded": scheduler.loaded,
                  "queued": sum(s.jobs.qsize() for s in state.roster.all()),
                  "models": [{"id": s.model_id, "loaded": s.loaded} for s in state.roster.all()]})


async def generation(state: ServeState, chat: bool, request: Request) -> Response:
    """/v1/chat/completions (`chat`) and /v1/completions: the request read, its rows queued, and
    its answer rendered whole or streamed; every request and its answer or error logged."""
    heard = Heard(request, "/v1/chat/completions" if chat else "/v1/completions")
    scheduler = state.roster.default  # until the request names its model
    try:
        if state.log is not None:
            await heard.read()
        scheduler, prepared = await prepare(state, request, chat)
        session = Session(prepared, state.metrics.of(scheduler))
        try:
            session.submit(scheduler)
        except queue.Full:
            raise BadRequest("the server is busy: its queue is full", "queue_full", 503) from None
        renderer = renderer_for(scheduler, prepared, chat)
        if prepared.stream:
            ended = partial(logged_stream, state, heard, renderer) if state.log is not None else None
            return StreamingResponse(stream(session, renderer, ended), media_type="text/event-stream")
        done: dict[int, Completion] = {}
        try:
            whole_answer = await until_client_leaves(request, collect(session, done))
        finally:
            session.cancel()  # a client that left has its rows aborted (and counted so)
        if not whole_answer:
            if state.log is not None:
                await state.write(answered_record(heard, renderer, done, CLIENT_CLOSED))
            return error_response(CLIENT_CLOSED, "the client left before the answer was complete", "client_closed")
        data = renderer.whole(done)
        if state.log is not None:
            await state.write(answered_record(heard, renderer, done, 200))
        return _json(data)
    except BadRequest as exc:
        await state.write(failed_record(asked_model(heard, scheduler), heard, exc.status, str(exc), exc.code))
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return error_response(exc.status, str(exc), exc.code, headers)
    except Exception as exc:  # the server answers and carries on
        message = f"{type(exc).__name__}: {exc}"
        await state.write(failed_record(scheduler.model_id, heard, 500, message, "generation_failed"))
        return error_response(500, message, "generation_failed")


def logged_stream(state: ServeState, heard: Heard, renderer: Renderer, done: dict[int, Completion],
                  whole_answer: bool) -> None:
    """A stream's record, once it ended: written off the event loop, even when the stream was
    cut short (its task is being cancelled then, so it is not awaited)."""
    if state.log is not None:
        record = answered_record(heard, renderer, done, 200 if whole_answer else CLIENT_CLOSED)
        asyncio.get_running_loop().run_in_executor(None, state.log.write, record)


async def stream(session: Session, renderer: Renderer,
                 ended: Callable[[dict[int, Completion], bool], None] | None = None) -> AsyncIterator[bytes]:
    """Server-sent events, OpenAI's chunk format, each chunk one choice's; [DONE] last. A client
    that leaves cancels its rows. `ended` hears what finished, and whether the stream got to its end."""
    done: dict[int, Completion] = {}
    finished = False
    try:
        for chunk in renderer.start():
            yield _sse(chunk)
        try:
            async for index, event in session:
                if isinstance(event, Completion):
                    done[index] = event
                for chunk in renderer.delta(index, event):
                    yield _sse(chunk)
            for chunk in renderer.end(done):
                yield _sse(chunk)
        except Exception as exc:
            yield _sse({"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error",
                                  "code": "generation_failed"}})
        yield b"data: [DONE]\n\n"
        finished = True
    finally:
        session.cancel()
        if ended is not None:
            ended(done, finished)


async def collect(session: Session, done: dict[int, Completion]) -> None:
    async for index, event in session:
        if isinstance(event, Completion):
            done[index] = event


async def until_client_leaves(request: Any, work: Any) -> bool:
    """Run `work` (a coroutine) until it ends (True) or the client disconnects first (False: it
    is cancelled). Its body was read, so the next message uvicorn gives is the disconnect."""
    async def left() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(left())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watch.cancel()
    if not task.done():
        task.cancel()
        return False
    task.result()  # its exception, if it failed
    return True


def model_list(roster: ModelRoster) -> list[dict[str, Any]]:
    """OpenAI's model objects, the default first: every model the server holds or has held, whether
    it is loaded now, and, when loaded, its keep-alive and how long until it unloads (Ollama's
    /api/ps tells the same); `max_model_len` once known, as vLLM's; `capabilities` as Ollama's
    /api/show names them ("vision": it reads images)."""
    now = time.monotonic()
    out = []
    served: list[Scheduler | ServedAdapter] = [*roster.all(), *roster.adapters.values()]
    for s in served:
        vision = s.ref.path.is_dir() and takes_images(s.ref.path)
        entry: dict[str, Any] = {"id": s.model_id, "object": "model", "created": 0, "owned_by": "lmpipe",
                                 "root": s.model_id, "loaded": s.loaded, "keep_alive_s": s.settings.keep_alive,
                                 "capabilities": ["completion", "vision"] if vision else ["completion"]}
        if s.loaded and s.settings.keep_alive:
            entry["expires_in_s"] = round(max(0.0, s.settings.keep_alive - (now - s.last_used)), 3)
        if s.max_model_len:
            entry["max_model_len"] = s.max_model_len
        if isinstance(s, ServedAdapter):  # a LoRA adapter, as vLLM lists one
            entry.update(root=str(s.adapter.path), parent=s.base.model_id)
        out.append(entry)
    return out


def asked_model(heard: Heard, scheduler: Scheduler) -> str:
    """The model a refused request named, as far as it could be read; else the one it went to."""
    try:
        name = orjson.loads(heard.raw).get("model") if heard.raw else None
    except (orjson.JSONDecodeError, AttributeError):
        name = None
    return name if isinstance(name, str) and name else scheduler.model_id
