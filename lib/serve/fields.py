"""The one rule for request fields: each is implemented, or answered with a 400 that names it.

Every endpoint of lm-serve (lmpipe.serve.app's, and any added beside them) reads its JSON body
with `read_body` and passes it to `check_fields` with the names it implements, before it reads
one of them; values are read with `typed`. A field no endpoint implements is refused by name,
never quietly dropped (OpenAI's `suffix`, `best_of`, ...), except the true no-ops
of NO_OPS, which change nothing an answer could show. A field sent as null is as absent, as
OpenAI's API and vLLM's protocol (vllm/entrypoints/openai/protocol.py) take it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from starlette.responses import Response

# Accepted and ignored: nothing in an answer could differ if they were implemented.
NO_OPS = {
    "user": "an end user's id, for a provider's abuse monitoring",
    "metadata": "tags for a provider's stored completions (nothing is stored)",
    "parallel_tool_calls": "whether several tool calls may come at once (an answer makes at most one)",
}

# Fields of both text endpoints (sampling, structured output, lmpipe's extensions).
GENERATION = frozenset({
    "model", "stream", "stream_options", "n", "seed", "stop", "max_tokens",
    "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
    "logit_bias", "logprobs", "response_format", "tools", "tool_choice",
    "regex", "choice", "prefix",  # lmpipe's extensions
})
CHAT = GENERATION | {"messages", "max_completion_tokens", "top_logprobs",
                     "chat_template_kwargs", "reasoning_effort", "include_reasoning",  # vLLM's
                     "reasoning_budget"}  # lmpipe's (llama.cpp's --reasoning-budget, per request)
COMPLETIONS = GENERATION | {"prompt", "echo"}
EMBEDDINGS = frozenset({"model", "input", "encoding_format", "dimensions"})
# vLLM's /tokenize (its text and chat forms) and /detokenize (vllm/entrypoints/openai/protocol.py).
TOKENIZE_TEXT = frozenset({"model", "prompt", "add_special_tokens", "return_token_strs"})
TOKENIZE_CHAT = frozenset({"model", "messages", "add_generation_prompt", "continue_final_message",
                           "add_special_tokens", "return_token_strs"})
DETOKENIZE = frozenset({"model", "tokens"})


class BadRequest(Exception):
    """A request that cannot be served as asked: a JSON error with `code` and `status` (400)."""

    def __init__(self, message: str, code: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.code, self.status = code, status


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    """OpenAI's error body `{"error": {"message", "type", "code"}}` with its status code."""
    # starlette here, not at the top: lm-serve's and lm-batch's option checks reach this module
    # (through lmpipe.serve.roster), and a usage error answers without starlette.
    from starlette.responses import Response

    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": code}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def read_body(request: Any) -> dict[str, Any]:
    """The request's JSON object (a starlette Request)."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "invalid_json")
    return body


def check_fields(body: dict[str, Any], implemented: Iterable[str], endpoint: str) -> None:
    """A 400 naming the first field (in the order sent) that `endpoint` does not implement."""
    known = set(implemented) | set(NO_OPS)
    for name, value in body.items():
        if value is not None and name not in known:
            raise BadRequest(f"`{name}` is not supported by {endpoint}", "unsupported_parameter")


def typed(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any) -> Any:
    """The field's value if it has one of `kinds` (a bool is not an int), `default` if absent or null."""
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise BadRequest(f"`{name}` must be {' or '.join(k.__name__ for k in kinds)}", "invalid_type")
    return value


def unsupported(name: str, why: str) -> BadRequest:
    """A 400 for an implemented field given a value that is not (`n` with ..., say)."""
    return BadRequest(f"`{name}`: {why}", "unsupported_parameter")
