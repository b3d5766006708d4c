"""lm-serve's /v1/embeddings, in OpenAI's form, over lmpipe.backends.embedding.

`input` is a string, a list of strings, a list of token ids, or a list of lists of token ids;
`encoding_format` is float or base64; `dimensions` shortens vectors of models trained for it
(others answer 400 unless it is their own size). Which model embeds: the request's `model`,
resolved as --model is (the embedded all-minilm-l6-v2, a folder, a hub id in the cache) and
loaded on first use; without `model`, the embedded all-MiniLM-L6-v2. It is not the server's
generation model unless the request names it (a decoder then pools its last token). Requests
may name the models they may name for generation (lmpipe.serve.roster: --listed-only,
--allow-model-paths). Embedding models count with the generation models against --max-models
and unload after the default model's keep-alive idle (HeldEmbedder); one request embeds at a time.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..backends.embedding import ENCODINGS, Embedder, EmbedSettings
from ..errors import LmpipeError, RecordError, UsageError
from ..models.loading import ModelSettings
from ..models.resolve import DEFAULT_EMBEDDING_MODEL
from .fields import EMBEDDINGS, BadRequest, check_fields, error_response, read_body
from .protocol import EmbeddingResponse, dumps
from .render import EmbeddingRenderer

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
WATCH_S = 0.1  # between two looks at whether an embedding model should unload


class HeldEmbedder:
    """One embedding model as the roster counts it beside the generation models (the attributes
    its gate reads: loaded, loading, idle, last_used, eviction): loaded on first use through the
    gate (--max-models), unloaded by its own watcher after the server's keep-alive idle, or when
    the gate asks (`eviction`), as a scheduler's worker does."""

    def __init__(self, settings: ModelSettings, keep_alive: float, gate: Callable[[Any], None],
                 notify: Callable[[str], None]):
        self.settings, self.keep_alive, self.gate, self.notify = settings, keep_alive, gate, notify
        self.ref = settings.ref()
        self.name = self.ref.name
        self.embedder: Embedder | None = None
        self.loading = False
        self.busy = False
        self.eviction: str | None = None
        self.last_used = time.monotonic()
        self.lock = threading.Lock()
        threading.Thread(target=self._watch, name="lmpipe-embedder", daemon=True).start()

    @property
    def loaded(self) -> bool:
        return self.embedder is not None

    @property
    def idle(self) -> bool:
        return not self.busy

    @contextmanager
    def use(self) -> Iterator[Embedder]:
        """The model, loaded if it is not (after the gate made room), held while in use."""
        with self.lock:
            self.busy = True
            try:
                if self.embedder is None:
                    self.gate(self)
                    self.loading = True
                    try:
                        self.notify(f"loading {self.name}")
                        self.embedder = Embedder(self.settings)
                    finally:
                        self.loading = False
                yield self.embedder
            finally:
                self.busy = False
                self.last_used = time.monotonic()

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_S)
            keep, why = self.keep_alive, self.eviction
            expired = keep and time.monotonic() - self.last_used > keep
            if self.embedder is None or not (why or expired) or not self.lock.acquire(blocking=False):
                continue
            try:
                self.embedder = None
                self.eviction = None
                gc.collect()
            finally:
                self.lock.release()
            self.notify(f"unloaded {self.name} ({why})" if why else f"unloaded {self.name} after {keep:g} s idle")


class EmbeddingModels:
    """The embedding models this server has loaded, by the name requests use; a name other than
    the default embedding model's must be one the roster lets requests load (ModelRoster.admitted).
    With a roster, its keep-alive and --max-models count them too."""

    def __init__(self, device: str = "auto", dtype: str = "auto", roster: Any = None):
        self.device, self.dtype, self.roster = device, dtype, roster
        self.held: dict[str, HeldEmbedder] = {}
        self.lock = threading.Lock()  # one load or forward pass at a time: torch's threads are shared

    def get(self, name: str) -> HeldEmbedder:
        if name not in self.held:
            if name != DEFAULT_EMBEDDING_MODEL and self.roster is not None:
                self.roster.admitted(name)
            settings = ModelSettings(name, self.device, self.dtype)
            try:
                settings.ref()
            except UsageError as exc:
                raise BadRequest(f"The model `{name}` does not exist: {exc}", "model_not_found", 404) from None
            if self.roster is None:
                self.held[name] = HeldEmbedder(settings, 0, lambda _: None, lambda _: None)
            else:
                self.held[name] = self.roster.hold(lambda gate, notify: HeldEmbedder(
                    settings, self.roster.default.settings.keep_alive, gate, notify))
        return self.held[name]


def inputs_of(value: Any) -> list[str | list[int]]:
    """OpenAI's `input` forms, as one list of texts or token-id lists."""
    def ids(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)

    if isinstance(value, str):
        value = [value]
    elif ids(value):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) or ids(v) for v in value):
        raise BadRequest("`input` must be a string, a list of strings, a list of token ids or a list of "
                         "lists of token ids, and not empty", "invalid_type")
    if len(value) > MAX_INPUTS:
        raise BadRequest(f"`input` holds {len(value)} items; at most {MAX_INPUTS}", "invalid_value")
    if any(v == "" for v in value):
        raise BadRequest("`input` cannot hold an empty string", "invalid_value")
    return value


def answer(models: EmbeddingModels, body: dict[str, Any]) -> EmbeddingResponse:
    """The response body for a request body, or BadRequest. Runs the model: call it off the event loop."""
    inputs = inputs_of(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise BadRequest(f"`encoding_format` must be one of {', '.join(ENCODINGS)}", "invalid_value")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise BadRequest("`dimensions` must be an integer", "invalid_type")
    name = body.get("model") or DEFAULT_EMBEDDING_MODEL
    if not isinstance(name, str):
        raise BadRequest("`model` must be a string", "invalid_type")
    with models.lock, models.get(name).use() as embedder:
        try:
            ids = [embedder.token_ids(v) if isinstance(v, str) else v for v in inputs]
            vocabulary = len(embedder.tokenizer)
            if any(i < 0 or i >= vocabulary for v in ids for i in v):
                raise BadRequest("`input` token ids out of the vocabulary", "invalid_value")
            vectors = embedder.embed_ids(ids, EmbedSettings(dimensions=dimensions))
        except RecordError as exc:
            raise BadRequest(str(exc).replace(" (--chunk averages windows)", ""), "context_length_exceeded") from None
        except UsageError as exc:
            raise BadRequest(str(exc), "invalid_value") from None
    return EmbeddingRenderer(embedder.ref.id, encoding).whole(vectors, sum(len(v) for v in ids))


def embedding_models(roster: Any) -> EmbeddingModels:
    """Embedding models load on their first request, on the device and dtype of the roster's
    default model, as far as its rules let requests name models."""
    settings = roster.default.settings.model
    return EmbeddingModels(settings.device, settings.dtype, roster)


async def embeddings(models: EmbeddingModels, request: Request) -> Response:
    try:
        body = await read_body(request)
        check_fields(body, EMBEDDINGS, "/v1/embeddings")
        data = await run_in_threadpool(answer, models, body)
        return Response(dumps(data), media_type="application/json")
    except BadRequest as exc:
        return error_response(exc.status, str(exc), exc.code)
    except LmpipeError as exc:
        return error_response(500, str(exc), "embedding_failed")
    except Exception as exc:  # the server answers and carries on
        return error_response(500, f"{type(exc).__name__}: {exc}", "embedding_failed")


def embeddings_route(models: EmbeddingModels) -> Route:
    return Route("/v1/embeddings", partial(embeddings, models), methods=["POST"])
