"""How lm-serve refuses a request, for every endpoint: BadRequest raised while reading it, and
OpenAI's error body `{"error": {"message", "type", "code"}}` with its status code."""

from __future__ import annotations

import orjson


class BadRequest(Exception):
    def __init__(self, message: str, code: str = "invalid_request", status: int = 400):
        super().__init__(message)
        self.code, self.status = code, status


def error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None):
    from starlette.responses import Response

    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = orjson.dumps({"error": {"message": message, "type": kind, "code": code}})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def json_object(raw: bytes) -> dict:
    """A request body as a JSON object, or BadRequest (the same words /v1/chat/completions uses)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", "invalid_json")
    return body
