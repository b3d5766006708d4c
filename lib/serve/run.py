"""lm-serve's task: the models' schedulers from the settings (and the request log, --log), then uvicorn until Ctrl-C.

The listening socket is bound here, before uvicorn starts, so that the server is recorded in
lmpipe's home (lmpipe.backends.warm) only once it truly listens, with the port it got (--port 0
picks a free one), and the record is removed when it stops.
"""

from __future__ import annotations

import signal
import socket
from dataclasses import dataclass, field

from ..backends import warm
from ..errors import UsageError
from ..records.pipe import say
from .guard import GuardSettings, guarded, header_deadline
from .prompts import ImagePolicy
from .requestlog import RequestLog
from .roster import ModelRoster, RosterSettings

MAX_N = 16  # choices per request unless --max-n says otherwise (one request cannot fill the queue)
CONNECTIONS_PER_REQUEST = 4  # uvicorn's bound on connections, over the guard's on requests


@dataclass(frozen=True)
class ServeRun:
    """One lm-serve run: the models and their settings, where to listen, whether to load them now."""

    models: RosterSettings = field(default_factory=RosterSettings)
    host: str = "127.0.0.1"
    port: int = 8080
    preload: bool = False
    log: str | None = None  # a file every request and its answer is appended to (lmpipe.serve.requestlog)
    log_max_bytes: int = 0  # past this size the log rotates; 0: never
    images: ImagePolicy = field(default_factory=ImagePolicy)  # where a chat's images may come from, how many
    threads: int | None = None  # torch's CPU threads; None: engine_threads()
    guard: GuardSettings = field(default_factory=GuardSettings)  # keys, origins, body limits
    max_n: int = MAX_N  # `n` at most this


def engine_threads(requested: int | None) -> int:
    """torch's CPU threads under lm-serve: one fewer than torch's own default unless told, at least one.

    The event loop streaming the answers needs a core of its own: when torch's threads took
    every core, each decode step waited on whichever of them the loop had pushed aside, one
    stream and a full batch alike (lm-bench -c shows it; docs/benchmarks.md). vLLM's CPU guide
    leaves cores to its server likewise.
    """
    # torch, uvicorn and the app (starlette) inside the functions: lm-serve's option checks import
    # this module, and a usage error answers without any of them.
    import torch

    if requested:
        return requested
    # torch's default is the cores it may use (its affinity): never more threads than it would take.
    return max(1, torch.get_num_threads() - 1)


def run(r: ServeRun) -> int:
    import torch
    import uvicorn

    from .app import create_app

    threads = engine_threads(r.threads)
    torch.set_num_threads(threads)
    roster = ModelRoster(r.models, lambda m: say("lm-serve", m))
    log = None
    if r.log:
        try:
            log = RequestLog(r.log, r.log_max_bytes, failed=lambda m: say("lm-serve", m))
        except OSError as exc:
            raise UsageError(f"--log {r.log}: {exc.strerror or exc}") from None
    if r.preload:  # as many as may be loaded at once, in the order given
        for scheduler in roster.all()[:r.models.max_models or None]:
            scheduler.model()
    family = socket.AF_INET6 if ":" in r.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((r.host, r.port))
        sock.listen(2048)  # before the record: a tool that finds it must find it listening
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {r.host}:{r.port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    local = "127.0.0.1" if r.host in ("0.0.0.0", "") else "[::1]" if r.host == "::" else r.host
    url = f"http://{local}:{port}"
    token = warm.new_token()
    entry = warm.register(url, [warm.holds(s.model_id, s.settings.model, s.settings.decoding, s.settings.chat_template)
                                for s in roster.all()], token)
    say("lm-serve", f"serving {', '.join(s.model_id for s in roster.all())} on http://{r.host}:{port}/v1 "
                    f"({threads} torch thread{'s' if threads > 1 else ''})")

    def stopped(sig: int, _frame: object) -> None:
        # uvicorn shuts down on SIGTERM, then raises it again for the exit status: the record goes first.
        warm.unregister(entry)
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)

    signal.signal(signal.SIGTERM, stopped)
    try:
        app = guarded(create_app(roster, log, r.images, r.max_n), r.guard, token)
        # uvicorn's own bound counts open connections too (idle keep-alives): a backstop past the guard's
        config = uvicorn.Config(app, log_level="warning", access_log=False,
                                limit_concurrency=CONNECTIONS_PER_REQUEST * r.guard.max_requests,
                                http=header_deadline(r.guard.read_timeout_s))
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        warm.unregister(entry)
        roster.close()
        if log is not None:
            log.close()
    return 0
