"""lm-serve's task: a scheduler from the settings, then uvicorn until Ctrl-C."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..engine.scheduler import Scheduler, SchedulerSettings


@dataclass(frozen=True)
class ServeRun:
    """One lm-serve run: the scheduler's settings, where to listen, whether to load the model now."""

    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    host: str = "127.0.0.1"
    port: int = 8080
    preload: bool = False


def run(r: ServeRun) -> int:
    import uvicorn

    from ..records.pipe import say
    from .app import create_app

    engine = Scheduler(r.scheduler, lambda m: say("lm-serve", m))
    if r.preload:
        engine.model()
    say("lm-serve", f"serving {engine.model_id} on http://{r.host}:{r.port}/v1")
    uvicorn.run(create_app(engine), host=r.host, port=r.port, log_level="warning", access_log=False)
    engine.close()
    return 0
