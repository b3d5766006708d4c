"""Tools talking to a server: lm-serve, or any OpenAI-compatible one (vLLM, llama.cpp, Ollama).

A tool uses a server when given `--server URL` or `LMPIPE_SERVER=URL` (URL with or without
/v1). It sends each record as a chat request (or a plain completion with --raw), up to
`--concurrency` at once so the server can batch them, and rebuilds the record it would have
written in-process: same text, same `manifest`, the same `stats` fields. What differs between
kinds of server (constraint fields, finish reasons, token counts) is `dialects`' business.
lm-serve sends its own stats and manifest; another server's answer is streamed, so the client
times it itself. Every answer is checked here as in-process (the regex, the choices, the
schema, the tool's parameters): a server that did not enforce a constraint gives an error
record, never a record that looks fine. Whatever a server answers (an error status, a body that
is not JSON, a dropped connection) is that record's error alone; 429, 503 and lost connections
are retried (`--retries`), after Retry-After when the server gives one.
No torch is imported on this side, so a tool in a pipeline starts in a fraction of a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

from ..chat.answers import Plan, plan_for
from ..chat.prompts import PromptSettings, messages_of, text_of
from ..chat.reasoning import CLOSE, OPEN
from ..chat.tools import CHOICES, record_choice
from ..engine.timing import Clock, combined_rate, per_second
from ..errors import LmpipeError, RecordError, UsageError
from ..records.jsonl import Item, error_record
from ..records.runner import Finished, Streamed
from ..version import __version__
from ..vision.images import data_url, read_image, record_images
from .dialects import (
    KINDS,
    ServerKind,
    constraint_fields,
    describe,
    detect,
    finish_reason,
    output_tokens,
    sampling_fields,
    streams_tools,
)
from .generate import answer_record, run_settings
from .vision_prompts import ImageSource


class ServerUnavailable(LmpipeError):
    """No server answers at the URL given (exit code 1)."""


@dataclass(frozen=True)
class ServerSettings:
    url: str
    kind: str | None = None  # one of dialects.KINDS; None: asked of the server once
    concurrency: int = 8  # requests in flight at once
    retries: int = 3  # more tries after a 429, a 503 or a lost connection
    timeout: float = 600.0  # seconds a request may take
    api_key: str | None = None  # sent as `Authorization: Bearer KEY`

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KINDS:
            raise UsageError(f"--server-kind must be one of {', '.join(KINDS)}")
        if self.concurrency < 1:
            raise UsageError("--concurrency must be at least 1")
        if self.retries < 0:
            raise UsageError("--retries must be 0 or more")


def api_base(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        url = "http://" + url
    return url if url.endswith("/v1") else url + "/v1"


RETRIED = (429, 503)
MAX_WAIT_S = 30.0


def backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 8.0)


def retry_after(headers: Any, attempt: int) -> float:
    try:
        return min(max(float(headers.get("Retry-After", "")), 0.0), MAX_WAIT_S)
    except ValueError:
        return backoff(attempt)


def error_message(status: int, body: bytes) -> str:
    """One line for any error body: OpenAI's {"error": {"message"}}, a plain {"error": "..."},
    FastAPI's {"detail"}, or text that is not JSON at all."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    message: Any = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or data.get("detail") or data.get("message")
    if not message:
        message = " ".join(text.split())[:300] or "(empty body)"
    return f"server answered {status}: {message if isinstance(message, str) else json.dumps(message)}"


@dataclass
class Answer:
    """One choice of a chat or completion answer, however it came (whole or streamed)."""

    model: str | None
    text: str
    tool_calls: list[dict[str, Any]]
    finish: dict[str, Any]  # the choice's finish_reason and (vLLM) stop_reason
    usage: dict[str, Any]
    lmpipe: dict[str, Any] | None = None  # lm-serve's own part: stats, identity, device...
    ttft_s: float | None = None  # measured by the client from the stream
    total_s: float | None = None


def sse_data(lines: Iterator[str]) -> Iterator[Any]:
    """The JSON payloads of a server-sent event stream, up to `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


class StreamedAnswer:
    """Pieces of a streamed answer gathered into one `Answer`, timed as they arrive."""

    def __init__(self, chat: bool, clock: Clock):
        """`clock`: started when the request was first sent, so the times include the wait."""
        self.chat, self.clock = chat, clock
        self.model: str | None = None
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.first: float | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("error"), (dict, str)):  # an error sent inside the stream
            raise RecordError(error_message(200, json.dumps(chunk).encode()))
        self.model = chunk.get("model") or self.model
        self.usage = chunk.get("usage") or self.usage
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {} if self.chat else choice
            piece = (delta.get("content") if self.chat else delta.get("text")) or ""
            thought = (delta.get("reasoning_content") or delta.get("reasoning") or "") if self.chat else ""
            if thought:
                self.reasoning.append(thought)
            calls = delta.get("tool_calls") or []
            if (piece or calls or thought) and self.first is None:
                self.first = self.clock()
            self.text.append(piece)
            for call in calls:
                slot = self.calls.setdefault(call.get("index", 0), {"name": "", "arguments": ""})
                f = call.get("function") or {}
                slot["name"] += f.get("name") or ""
                slot["arguments"] += f.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish = {"finish_reason": choice["finish_reason"], "stop_reason": choice.get("stop_reason")}

    def answer(self) -> Answer:
        if not self.finish:
            raise RecordError("server: the stream ended before the answer did")
        total = self.clock()
        calls = [{"function": c} for _, c in sorted(self.calls.items())]
        return Answer(self.model, with_reasoning("".join(self.reasoning), "".join(self.text)), calls, self.finish,
                      self.usage,
                      ttft_s=round(self.first if self.first is not None else total, 6), total_s=round(total, 6))


def with_reasoning(reasoning: str, text: str) -> str:
    """An answer whose reasoning a server sent apart (`reasoning_content`, as vLLM names it) as
    the model wrote it, so the record splits it as in-process (lmpipe.chat.reasoning)."""
    return f"{OPEN}{reasoning}{CLOSE}{text}" if reasoning else text


def whole_answer(data: dict[str, Any], chat: bool) -> Answer:
    try:
        choice = data["choices"][0]
        message = choice["message"] if chat else choice
        text = (message.get("content") if chat else message.get("text")) or ""
        if chat:
            text = with_reasoning(message.get("reasoning_content") or message.get("reasoning") or "", text)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise RecordError(f"server: the answer has no choice: {json.dumps(data)[:200]}") from None
    return Answer(data.get("model"), text, (message.get("tool_calls") or []) if chat else [],
                  {"finish_reason": choice.get("finish_reason"), "stop_reason": choice.get("stop_reason")},
                  data.get("usage") or {}, data.get("lmpipe"))


class ServerClient:
    def __init__(self, settings: ServerSettings | str):
        import httpx

        self.settings = settings if isinstance(settings, ServerSettings) else ServerSettings(settings)
        self.base = api_base(self.settings.url)
        self.root = self.base[: -len("/v1")]
        key = self.settings.api_key
        self.http = httpx.Client(timeout=httpx.Timeout(self.settings.timeout, connect=5.0),
                                 limits=httpx.Limits(max_connections=max(64, self.settings.concurrency)),
                                 headers={"Authorization": f"Bearer {key}"} if key else None)
        self._models: list[dict[str, Any]] | None = None
        self._kind: ServerKind | None = ServerKind(self.settings.kind) if self.settings.kind else None

    def model_entries(self) -> list[dict[str, Any]]:
        import httpx

        if self._models is None:
            try:
                response = self.http.get(self.base + "/models")
                if response.status_code == 401:
                    raise ServerUnavailable(f"the server at {self.base} wants an API key: give it with --api-key "
                                            "(or LMPIPE_API_KEY, or OPENAI_API_KEY)")
                response.raise_for_status()
                data = response.json().get("data", [])
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                raise ServerUnavailable(f"no server at {self.base} ({type(exc).__name__}: {exc})") from None
            self._models = [m for m in data if isinstance(m, dict)]
        return self._models

    def models(self) -> list[str]:
        return [str(m.get("id")) for m in self.model_entries()]

    def _get_json(self, path: str) -> Any:
        import httpx

        try:
            response = self.http.get(self.root + path, timeout=5.0)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    @property
    def kind(self) -> ServerKind:
        """What kind of server this is, asked once (or as --server-kind says)."""
        if self._kind is None:
            self._kind = detect(self.model_entries(), self._get_json)
        return self._kind

    def manifest(self) -> dict[str, Any]:
        return {"url": self.base, **self.kind.manifest()}

    def _send(self, path: str, payload: dict[str, Any], read: Callable[[Any], Answer]) -> Answer:
        """POST with retries; `read` turns a 200 response into the answer."""
        import httpx

        for attempt in range(self.settings.retries + 1):
            last = attempt == self.settings.retries
            try:
                with self.http.stream("POST", self.base + path, json=payload) as response:
                    if response.status_code in RETRIED and not last:
                        wait = retry_after(response.headers, attempt)
                        response.close()
                        time.sleep(wait)
                        continue
                    if response.status_code != 200:
                        raise RecordError(error_message(response.status_code, response.read()))
                    return read(response)
            except httpx.TimeoutException as exc:
                raise RecordError(f"server: no answer within {self.settings.timeout:g} s ({type(exc).__name__})") \
                    from None
            except (httpx.TransportError, httpx.StreamError) as exc:  # refused, reset, cut mid-stream
                if last:
                    raise RecordError(f"server: connection lost ({type(exc).__name__}: {exc}), "
                                      f"{attempt + 1} tries") from None
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def complete(self, payload: dict[str, Any], chat: bool, stream: bool) -> Answer:
        path = "/chat/completions" if chat else "/completions"

        def read_whole(response: Any) -> Answer:
            body = response.read()
            try:
                data = json.loads(body)
            except json.JSONDecodeError:
                raise RecordError(f"server: the answer is not JSON: {body[:200].decode('utf-8', 'replace')}") from None
            if not isinstance(data, dict):
                raise RecordError(f"server: the answer is not an object: {body[:200].decode('utf-8', 'replace')}")
            return whole_answer(data, chat)

        clock = Clock()

        def read_stream(response: Any) -> Answer:
            gathered = StreamedAnswer(chat, clock)
            try:
                for chunk in sse_data(response.iter_lines()):
                    gathered.add(chunk)
            except json.JSONDecodeError:
                raise RecordError("server: a streamed piece is not JSON") from None
            return gathered.answer()

        if stream:
            payload = {**payload, "stream": True, "stream_options": {"include_usage": True}}
            return self._send(path, payload, read_stream)
        answer = self._send(path, payload, read_whole)
        answer.total_s = round(clock(), 6)  # retries included: what the record cost
        return answer


def request_for(record: dict[str, Any], prompt: PromptSettings, images: ImageSource = ImageSource(),
                vision: bool = True) -> tuple[dict[str, Any], bool]:
    """The request body for one record (without model and sampling), and whether it is chat.

    The images named outside the messages (--image, the record's image, images and image_b64
    fields) are read here, with in-process generation's checks, and go as `data:` URL image_url
    parts before the first user message's text, where in-process generation puts them; a server
    whose model reads no images refuses them, and the record is an error, never answered without them.
    `vision` False: the server says its model reads text only; the record's image fields are then
    left alone, as a text model in-process leaves them."""
    named = [read_image(ref, images.max_pixels, True, "--image") for ref in images.images]
    named += record_images(record, images.field, images.max_pixels) if vision else []
    if prompt.raw:
        if named:
            raise RecordError("images go to a server in chat messages: drop --raw")
        text = text_of(record, prompt.field)
        return {"prompt": f"{prompt.system}\n\n{text}" if prompt.system else text}, False
    messages = messages_of(record, prompt)
    if named:
        first = next((k for k, m in enumerate(messages) if m["role"] == "user"), None)
        if first is None:
            raise RecordError("images need a user message to go with")
        content = messages[first]["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        messages = list(messages)  # the record's own stay as they came: they are written back out
        messages[first] = {**messages[first],
                           "content": [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in named] + parts}
    return {"messages": messages}, True


class RemoteGenerateTask:
    """GenerateTask's twin for a server: the same `process` contract, the same records."""

    def __init__(self, client: ServerClient, model: str | None, settings: Any, by_name: bool = False):
        """`by_name`: send `model` as it is (a record's agent named it); otherwise a server that
        serves one model under another name is sent that name."""
        self.client, self.model = client, model
        self.settings = replace(settings, sampling=settings.sampling.with_seed())
        if settings.top_probs:
            raise UsageError("--top-probs needs in-process generation (drop --server)")
        if not by_name:
            served = client.models()
            if served and model not in served:
                self.model = served[0] if len(served) == 1 else model
        self.kind = client.kind
        # A server that names its model's capabilities (lm-serve does) and leaves out "vision":
        # --image is refused, as in-process; a record's image fields stay data, as in-process.
        entry = next((m for m in client.model_entries() if m.get("id") == self.model), {})
        capabilities = entry.get("capabilities")
        self.vision = not isinstance(capabilities, list) or "vision" in capabilities
        if settings.images.images and not self.vision:
            raise UsageError(f"--image needs a vision-language model; the server's {self.model} reads text only")
        self.sampling = sampling_fields(self.kind, self.settings.sampling)  # a field it cannot take fails now
        if settings.constraint is not None:
            constraint_fields(self.kind, settings.constraint)
        if settings.prompt.prefix and self.kind.name != "lmpipe":
            raise UsageError(f"--prefix needs lm-serve ({describe(self.kind)} has no such field)")
        if settings.prompt.chat_template is not None:
            raise UsageError("--chat-template applies in-process (drop --server, or start lm-serve with it)")
        if settings.sampling.reasoning_budget is not None:
            raise UsageError("--reasoning-budget applies in-process (drop --server)")
        self.stream = self.kind.name != "lmpipe"  # lm-serve sends its own stats; others are timed here

    def payload(self, record: dict[str, Any], plan: Plan) -> tuple[dict[str, Any], bool]:
        body, chat = request_for(record, self.settings.prompt, self.settings.images, self.vision)
        body.update(model=self.model, **self.sampling)
        body.update(answer_format(record, plan, self.settings.tool_choice, self.kind))
        if self.settings.prompt.prefix:
            body["prefix"] = self.settings.prompt.prefix  # lmpipe's extension
        if chat:
            body.update(thinking_fields(self.settings.prompt))
        return body, chat

    def stats(self, a: Answer) -> dict[str, Any]:
        if a.lmpipe and a.lmpipe.get("stats"):
            return a.lmpipe["stats"]
        finish = finish_reason(self.kind, a.finish, bool(self.settings.sampling.stop))
        out = output_tokens(self.kind, a.usage.get("completion_tokens"), finish)
        rate = None  # a whole answer has no decode time
        # one token has no time after the first: rated over the whole, as in-process
        if out is not None and a.ttft_s is not None and a.total_s is not None:
            rate = combined_rate([(out, a.ttft_s, a.total_s)]) if out > 1 else per_second(out, a.total_s)
        return {"input_tokens": a.usage.get("prompt_tokens"), "output_tokens": out, "ttft_s": a.ttft_s,
                "tokens_per_s": rate, "total_s": a.total_s, "finish_reason": finish}

    def manifest(self, a: Answer) -> dict[str, Any]:
        part = a.lmpipe or {}
        if part:
            identity = part.get("identity") or {"model": a.model or self.model, "kind": "server"}
            return {**identity, **run_settings(self.settings), "cache": part.get("cache"),
                    "compile": part.get("compile"), "device": part.get("device"), "dtype": part.get("dtype"),
                    "versions": part.get("versions")}
        return {"model": a.model or self.model, "kind": "server", "server": self.client.manifest(),
                **run_settings(self.settings), "device": None, "dtype": None, "versions": {"lmpipe": __version__}}

    def output(self, item: Item, a: Answer, chat: bool, plan: Plan) -> Finished:
        stats = self.stats(a)
        text = generated_text(a, chat, self.settings.prompt.prefix)
        if plan.constraint is not None and plan.constraint.kind == "json_schema" and not a.lmpipe:
            text = compact_json(text)
        done = answer_record(item, self.settings, plan, text, stats.get("finish_reason") or "stop", stats,
                             self.manifest(a))
        if done.failed and not a.lmpipe and (plan.constraint is not None or plan.tools):
            why = done.record["error"]
            record = {**done.record, "error": f"{describe(self.kind)} did not enforce the constraint: {why}"}
            return Finished(item, record, failed=True)
        return done

    def one(self, item: Item) -> Finished:
        try:
            record = item.record or {}
            plan = plan_for(record, self.settings.constraint, self.settings.tool_choice)
            body, chat = self.payload(record, plan)
            stream = self.stream and (not plan.tools or streams_tools(self.kind))
            return self.output(item, self.client.complete(body, chat, stream), chat, plan)
        except RecordError as exc:
            return Finished(item, error_record(item, str(exc)), failed=True)

    def process(self, batch: list[Item]) -> Iterator[Finished | Streamed]:
        workers = max(1, min(len(batch), self.client.settings.concurrency))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self.one, item) for item in batch]
            for future in as_completed(futures):
                yield future.result()


def thinking_fields(prompt: PromptSettings) -> dict[str, Any]:
    """--think and --reasoning-effort as vLLM (and lm-serve, llama.cpp's server) take them:
    `chat_template_kwargs` and `reasoning_effort`."""
    out: dict[str, Any] = {}
    if prompt.think is not None:
        out["chat_template_kwargs"] = {"enable_thinking": prompt.think}
    if prompt.reasoning_effort is not None:
        out["reasoning_effort"] = prompt.reasoning_effort
    return out


def answer_format(record: dict[str, Any], plan: Plan, tool_choice: str, kind: ServerKind) -> dict[str, Any]:
    """The request fields for the record's plan: its tools and tool choice, and the format asked for."""
    out: dict[str, Any] = {}
    if "tools" in record:
        choice: Any = record_choice(record, tool_choice)
        if choice not in CHOICES:
            choice = {"type": "function", "function": {"name": choice}}
        out.update(tools=record["tools"], tool_choice=choice)
    if plan.constraint is not None:  # None when the record calls tools
        out.update(constraint_fields(kind, plan.constraint))
    return out


def compact_json(text: str) -> str:
    """A JSON answer written compactly, as in-process answers are (some servers pretty-print)."""
    try:
        return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
    except json.JSONDecodeError:
        return text  # incomplete: the record's error says so


def generated_text(a: Answer, chat: bool, prefix: str) -> str:
    """What the model wrote after the prefix; a tool call as the JSON it was decoded as."""
    if chat and a.tool_calls:
        f = a.tool_calls[0].get("function") or {}
        try:
            arguments = json.loads(f.get("arguments") or "")
        except (json.JSONDecodeError, TypeError):
            raise RecordError(f"server: tool call arguments are not JSON: {f.get('arguments')!r}") from None
        return json.dumps({"name": f.get("name"), "arguments": arguments}, ensure_ascii=False)
    return a.text[len(prefix):] if prefix and a.text.startswith(prefix) else a.text
