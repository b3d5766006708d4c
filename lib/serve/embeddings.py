"""lm-serve's /v1/embeddings, in OpenAI's form, over lmpipe.backends.embedding.

`input` is a string, a list of strings, a list of token ids, or a list of lists of token ids;
`encoding_format` is float or base64; `dimensions` shortens vectors of models trained for it
(others answer 400 unless it is their own size). Which model embeds: the request's `model`,
resolved as --model is (the embedded all-minilm-l6-v2, a folder, a hub id in the cache) and
loaded on first use; without `model`, the embedded all-MiniLM-L6-v2. It is not the server's
generation model unless the request names it (a decoder then pools its last token). Requests
may name the models they may name for generation (lmpipe.serve.roster: --listed-only,
--allow-model-paths). Models stay loaded for the server's life, and one request embeds at a time.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import orjson

from ..backends.embedding import ENCODINGS, Embedder, EmbedSettings, encoded
from ..errors import LmpipeError, RecordError, UsageError
from ..models.loading import ModelSettings
from ..models.resolve import DEFAULT_EMBEDDING_MODEL
from .fields import EMBEDDINGS, BadRequest, check_fields, error_response, read_body

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


class EmbeddingModels:
    """The embedding models this server has loaded, by the name requests use; a name other than
    the default embedding model's must be one the roster lets requests load (ModelRoster.admitted)."""

    def __init__(self, device: str = "auto", dtype: str = "auto", admitted: Callable[[str], Any] = lambda n: n):
        self.device, self.dtype, self.admitted = device, dtype, admitted
        self.loaded: dict[str, Embedder] = {}
        self.lock = threading.Lock()  # one load or forward pass at a time: torch's threads are shared

    def get(self, name: str) -> Embedder:
        if name not in self.loaded:
            if name != DEFAULT_EMBEDDING_MODEL:
                self.admitted(name)
            try:
                self.loaded[name] = Embedder(ModelSettings(name, self.device, self.dtype))
            except UsageError as exc:
                raise BadRequest(f"The model `{name}` does not exist: {exc}", "model_not_found", 404) from None
        return self.loaded[name]


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


def answer(models: EmbeddingModels, body: dict[str, Any]) -> dict[str, Any]:
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
    with models.lock:
        embedder = models.get(name)
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
    tokens = sum(len(v) for v in ids)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": n, "embedding": encoded(v, encoding)} for n, v in enumerate(vectors)],
        "model": embedder.ref.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def embeddings_route(roster: Any):
    """The route; embedding models load on their first request, on the device and dtype of the
    roster's default model, as far as its rules let requests name models."""
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
    from starlette.routing import Route

    settings = roster.default.settings.model
    models = EmbeddingModels(settings.device, settings.dtype, roster.admitted)

    async def embeddings(request):
        try:
            body = await read_body(request)
            check_fields(body, EMBEDDINGS, "/v1/embeddings")
            data = await run_in_threadpool(answer, models, body)
            return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
        except BadRequest as exc:
            return error_response(exc.status, str(exc), exc.code)
        except LmpipeError as exc:
            return error_response(500, str(exc), "embedding_failed")
        except Exception as exc:  # the server answers and carries on
            return error_response(500, f"{type(exc).__name__}: {exc}", "embedding_failed")

    return Route("/v1/embeddings", embeddings, methods=["POST"])
