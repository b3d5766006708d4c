"""lm-serve's task: an engine from the options, then uvicorn until Ctrl-C."""

from __future__ import annotations

from typing import Any

from ..engine.decoding import decoding_from_options
from ..engine.scheduler import Scheduler, SchedulerSettings
from ..models.loading import ModelSettings


def settings_from_options(o: dict[str, Any]) -> SchedulerSettings:
    return SchedulerSettings(
        model=ModelSettings.from_options(o),
        decoding=decoding_from_options(o),
        max_batch=o["max_batch"],
        max_queue=o["max_queue"],
        keep_alive=o["keep_alive"],
    )


def run(**o: Any) -> int:
    import uvicorn

    from ..records.pipe import say
    from .app import create_app

    engine = Scheduler(settings_from_options(o), lambda m: say("lm-serve", m))
    if o["preload"]:
        engine.model()
    say("lm-serve", f"serving {engine.model_id} on http://{o['host']}:{o['port']}/v1")
    uvicorn.run(create_app(engine), host=o["host"], port=o["port"], log_level="warning", access_log=False)
    engine.close()
    return 0
