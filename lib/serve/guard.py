"""What stands in front of lm-serve's routes: who may ask, from where, and how much.

Pure ASGI middleware, so a refused request never reaches a route and a body too big is never
read whole. In the order a request meets them:

- Host: a server bound to loopback answers only requests whose Host is loopback (localhost,
  127.0.0.0/8, ::1), so a web page that rebinds its own name to 127.0.0.1 gets a 400, as
  Ollama answers since GHSA-5jx5-hqx5-2vrj.
- Origin: a browser's request (it carries Origin) is served only from an origin listed in
  --allowed-origins, which also opts into CORS (starlette's CORSMiddleware answers the
  preflight, before a key is asked: browsers send none with it); any other origin gets a 403.
- Key: with --api-key, every route but /health wants `Authorization: Bearer KEY` (one of the
  keys, or the token of the server's entry in lmpipe's home, lmpipe.backends.warm), compared in
  constant time; else a 401.
- Body: a POST must be `application/json` (else 415: a page's form or text/plain post is a
  "simple" request browsers send without asking) and at most `max_body` bytes (413, answered
  from Content-Length before reading, or as soon as a chunked body passes it), read whole
  within `read_timeout_s` (408).
- Load: past `max_requests` requests at once, a 503 with Retry-After (/health still answers).

Every refusal is OpenAI's error shape (lmpipe.serve.fields.error_response). Before all of them,
`header_deadline` gives uvicorn's protocol a deadline for a request's headers (slowloris).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from .fields import error_response

MIB = 1024 * 1024
OPEN_PATHS = frozenset({"/health"})  # a load balancer's probe needs no key


@dataclass(frozen=True)
class GuardSettings:
    api_keys: tuple[str, ...] = ()  # any of them is accepted; none: no key is asked
    loopback_only: bool = True  # the server is bound to loopback: only loopback Host headers
    allowed_origins: tuple[str, ...] = ()  # browser origins served, with CORS ("*": any)
    max_body: int = 32 * MIB
    read_timeout_s: float = 30.0  # the request's headers, then its body, each within this
    max_requests: int = 512  # requests in the server at once (--limit-concurrency); past it a 503

    def __post_init__(self) -> None:
        if any(not k or k != k.strip() for k in self.api_keys):
            raise UsageError("--api-key: a key cannot be empty or start or end with spaces")
        if self.max_body < 1:
            raise UsageError("--max-body must be more than 0")
        if self.read_timeout_s <= 0:
            raise UsageError("--read-timeout must be more than 0")
        if self.max_requests < 1:
            raise UsageError("--limit-concurrency must be at least 1")


def is_loopback(host: str) -> bool:
    """A host name or address (a Host header's, port and brackets taken off) that is this machine."""
    host = host.strip().lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(header: str) -> str:
    """A Host header's host: `[::1]:8080` -> `::1`, `localhost:8080` -> `localhost`."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Compared with every key in constant time, so neither a key's length nor its prefix shows."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


class Guard:
    """Host, Origin, key and body checks before the app (see the module's docstring)."""

    def __init__(self, app: Any, settings: GuardSettings, token: str | None = None):
        self.app, self.settings = app, settings
        # The warm-server token (lmpipe.backends.warm) opens a server that asks for keys; one that
        # asks for none is open to every local client already.
        self.keys = settings.api_keys + ((token,) if token and settings.api_keys else ())
        self.inflight = 0  # requests past the guard and not yet answered (one event loop: no lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self.refusal(scope, headers)
        if refusal is not None:
            await error_response(*refusal)(scope, receive, send)
            return
        if self.inflight >= self.settings.max_requests and scope["path"] not in OPEN_PATHS:
            await error_response(503, f"the server is busy: {self.inflight} requests at once "
                                      "(lm-serve --limit-concurrency)", "server_busy",
                                 {"Retry-After": "1"})(scope, receive, send)
            return
        self.inflight += 1
        try:
            if scope["method"] == "POST":
                body = await self.body(headers, receive)
                if isinstance(body, tuple):
                    await error_response(*body, {"Connection": "close"})(scope, receive, send)
                    return
                if body is None:  # the client left while sending
                    return
                receive = replayed(body, receive)
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1

    def refusal(self, scope: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, str] | None:
        """(status, message, code) for a request refused on its headers alone, else None."""
        s = self.settings
        if s.loopback_only and "host" in headers and not is_loopback(host_of(headers["host"])):
            return 400, f"Host {headers['host']!r} is not this machine's: this server answers only " \
                        "loopback names (it is bound to loopback)", "invalid_host"
        origin = headers.get("origin")
        if origin is not None and origin not in s.allowed_origins and "*" not in s.allowed_origins:
            return 403, f"origin {origin!r} is not allowed (lm-serve --allowed-origins)", "origin_not_allowed"
        if scope["method"] == "OPTIONS":  # a CORS preflight: answered by CORSMiddleware, or by no route
            return None
        if self.keys and scope["path"] not in OPEN_PATHS:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not key_matches(given.strip(), self.keys):
                return 401, "Incorrect or missing API key: send it as `Authorization: Bearer KEY`", "invalid_api_key"
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").partition(";")[0].strip().lower()
            if kind != "application/json":
                return 415, f"the request body must be application/json, not {kind or 'untyped'}", \
                            "unsupported_media_type"
        return None

    async def body(self, headers: dict[str, str], receive: Any) -> bytes | tuple[int, str, str] | None:
        """The whole body, or a refusal (413, 408), or None when the client left."""
        limit = self.settings.max_body
        too_big = (413, f"the request body is more than {limit} bytes (lm-serve --max-body)", "body_too_large")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return too_big
        parts, size = [], 0
        try:
            async with asyncio.timeout(self.settings.read_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return too_big
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(parts)
        except TimeoutError:
            return 408, f"the request body did not arrive within {self.settings.read_timeout_s:g} s " \
                        "(lm-serve --read-timeout)", "request_timeout"


def replayed(body: bytes, receive: Any) -> Any:
    """A receive that gives the app the body already read, then whatever the client sends next
    (its disconnect)."""
    sent = False

    async def again() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: dict[str, Any] = await receive()
        return message

    return again


def guarded(app: Any, settings: GuardSettings, token: str | None = None) -> Any:
    """`app` behind the guard; with allowed origins, CORS between the two."""
    if settings.allowed_origins:
        # starlette and uvicorn inside the functions: lm-serve's option checks import this module,
        # and a usage error answers without either.
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(app, allow_origins=list(settings.allowed_origins), allow_methods=["GET", "POST"],
                             allow_headers=["Authorization", "Content-Type"])
    return Guard(app, settings, token)


def header_deadline(seconds: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's headers: a client that sends them
    a byte at a time (slowloris) is cut off `seconds` after its connection opened, or after the
    previous answer on it ended. uvicorn's own keep-alive timer stops at the first byte, and h11
    bounds the headers' size (16 KiB), not the time they take."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadline(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not before:  # a request's headers are in: its body has its own deadline (Guard)
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline
