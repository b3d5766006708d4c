"""lm-serve's /tokenize and /detokenize, in vLLM's request and response form.

/tokenize takes vLLM's text form (`prompt`, `add_special_tokens` default true) or its chat form
(`messages`, `add_generation_prompt` default true, `continue_final_message`,
`add_special_tokens` default false: the chat template writes its own), and answers
`{"count", "max_model_len", "tokens"}`, with `token_strs` when `return_token_strs` is set.
Text is tokenized by the server's own tokenizer, so its ids are the ones a completion's prompt
gets and the ones lm-tokenize writes; a chat is rendered as lmpipe.chat.prompts renders it for
/v1/chat/completions (content parts joined, as lmpipe.serve.prompts joins them). A text longer
than the model's context is tokenized all the same: counting a document's tokens is a use.
/detokenize takes `tokens` and answers `{"prompt"}`, special tokens kept, as vLLM does.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..chat.prompts import PromptSettings, messages_of
from ..engine.scheduler import Scheduler
from ..errors import RecordError
from .fields import DETOKENIZE, TOKENIZE_CHAT, TOKENIZE_TEXT, BadRequest, check_fields, error_response, read_body, typed
from .prompts import plain_messages
from .roster import ModelRoster


def _ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)


def chat_text(tokenizer: Any, body: dict[str, Any]) -> str:
    """The chat as the model's template renders it, with or without the generation prompt, or
    with the last message left open (`continue_final_message`)."""
    generation = typed(body, "add_generation_prompt", (bool,), True)
    continues = typed(body, "continue_final_message", (bool,), False)
    if generation and continues:
        raise BadRequest("cannot set both `continue_final_message` and `add_generation_prompt` to true",
                         "invalid_value")
    if tokenizer.chat_template is None:
        raise BadRequest("this model has no chat template: tokenize a `prompt` instead", "invalid_messages")
    messages = plain_messages(body.get("messages"))
    try:
        messages_of({"messages": messages}, PromptSettings())  # the roles and contents lm-generate accepts
        text: str = tokenizer.apply_chat_template(messages, add_generation_prompt=generation,
                                                  continue_final_message=continues, tokenize=False)
        return text
    except RecordError as exc:
        raise BadRequest(str(exc), "invalid_messages") from None
    except ValueError as exc:  # transformers: a final message that cannot be continued
        raise BadRequest(str(exc), "invalid_messages") from None


def tokenized(scheduler: Scheduler, body: dict[str, Any]) -> dict[str, Any]:
    """The response body for a /tokenize request body, or BadRequest. Loads the model for its
    context length: call it off the event loop."""
    chat = "messages" in body and body["messages"] is not None
    check_fields(body, TOKENIZE_CHAT if chat else TOKENIZE_TEXT, "/tokenize")
    tok = scheduler.tokenizer
    if chat:
        text, special = chat_text(tok, body), typed(body, "add_special_tokens", (bool,), False)
    else:
        if not isinstance(body.get("prompt"), str):
            raise BadRequest("`prompt` must be a string (or send `messages`)", "invalid_type")
        text, special = body["prompt"], typed(body, "add_special_tokens", (bool,), True)
    ids = list(tok(text, add_special_tokens=special)["input_ids"])
    out: dict[str, Any] = {"count": len(ids), "max_model_len": scheduler.context_length(), "tokens": ids}
    if typed(body, "return_token_strs", (bool,), False):
        out["token_strs"] = tok.convert_ids_to_tokens(ids)
    return out


def detokenized(scheduler: Scheduler, body: dict[str, Any]) -> dict[str, Any]:
    """The response body for a /detokenize request body, or BadRequest."""
    check_fields(body, DETOKENIZE, "/detokenize")
    ids = body.get("tokens")
    if ids is None or not _ids(ids):
        raise BadRequest("`tokens` must be a list of token ids", "invalid_type")
    if any(i < 0 or i >= len(scheduler.tokenizer) for i in ids):
        raise BadRequest(f"`tokens` must be in [0, {len(scheduler.tokenizer)})", "invalid_value")
    return {"prompt": scheduler.tokenizer.decode(ids)}


async def tokenization(roster: ModelRoster, work: Callable[[Scheduler, dict[str, Any]], dict[str, Any]],
                       request: Request) -> Response:
    """`work` (tokenized or detokenized) with the tokenizer of the request's `model`
    (lmpipe.serve.roster), answering errors as every endpoint does (lmpipe.serve.fields)."""
    try:
        body = await read_body(request)

        def answer() -> dict[str, Any]:
            return work(roster.get(body.get("model")), body)

        return Response(orjson.dumps(await run_in_threadpool(answer)), media_type="application/json")
    except BadRequest as exc:
        return error_response(exc.status, str(exc), exc.code)
    except Exception as exc:  # the server answers and carries on
        return error_response(500, f"{type(exc).__name__}: {exc}", "tokenization_failed")


def token_routes(roster: ModelRoster) -> list[Route]:
    return [Route("/tokenize", partial(tokenization, roster, tokenized), methods=["POST"]),
            Route("/detokenize", partial(tokenization, roster, detokenized), methods=["POST"])]
