"""The models one lm-serve holds: a scheduler per model, loaded on first use, evicted when idle.

`lm-serve -m A -m B` serves both; the first is the default (a request that names no model). A
request may also name a model the server was not started with: when it resolves as lmpipe's
--model does (an alias or a hub repo already in the cache: nothing is downloaded on a request's
behalf; a local folder or .gguf file only with --allow-model-paths), it gets a scheduler with the
server's own settings, as Ollama loads what a request names. Anything else is vLLM's 404. Each model keeps its own
keep-alive (lmpipe.engine.scheduler unloads it after that long idle), and with `max_models`
at most that many are loaded at once: loading one more first has the least recently used idle
model unloaded, or waits for one to become idle (Ollama's OLLAMA_MAX_LOADED_MODELS).

A LoRA adapter (`--lora NAME=PATH`: its base model's ModelSettings.loras) is served by its own
name through its base model's scheduler, as vLLM's multi-LoRA serves one: its requests' rows run
the adapter in the batches they share with the base model's rows and other adapters'.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..engine.scheduler import Scheduler, SchedulerSettings
from ..errors import LmpipeError, UsageError
from ..models.resolve import ModelRef, resolve
from .fields import BadRequest

WAIT_S = 0.05  # between two looks for an idle model to evict
PATH_KINDS = ("folder", "gguf")  # models named by a path on this machine
T = TypeVar("T")


@dataclass(frozen=True)
class RosterSettings:
    """The models to serve (the first is the default), how a model only a request names is served
    (its settings with that name; None: such requests get a 404), and how many may be loaded at once."""

    models: tuple[SchedulerSettings, ...] = (SchedulerSettings(),)
    on_request: SchedulerSettings | None = None
    max_models: int = 0  # 0: no bound
    allow_paths: bool = False  # a request may name a folder or .gguf file (--allow-model-paths)

    def __post_init__(self) -> None:
        if not self.models:
            raise UsageError("lm-serve needs at least one model")
        if self.max_models < 0:
            raise UsageError("--max-models must be 0 (no bound) or more")


def not_found(name: str) -> BadRequest:
    """vLLM's answer for a model it does not serve."""
    return BadRequest(f"The model `{name}` does not exist.", "model_not_found", 404)


class ServedAdapter:
    """A LoRA adapter known by its own name: its base model's scheduler, each job's row naming the
    adapter (lmpipe.engine.loop.Request.lora). Everything else is the base's."""

    def __init__(self, base: Scheduler, name: str, adapter: Any):
        self.base, self.model_id, self.adapter = base, name, adapter

    def submit(self, job: Any) -> None:
        job.lora = self.model_id
        self.base.submit(job)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


@dataclass
class ModelRoster:
    settings: RosterSettings
    notify: Callable[[str], None] = lambda m: None
    schedulers: dict[str, Scheduler] = field(default_factory=dict)  # by resolved model id, in the order served
    names: dict[str, str] = field(default_factory=dict)  # what a request may call a model -> its id
    others: list[Any] = field(default_factory=list)  # embedding models, counted by the gate with the schedulers
    adapters: dict[str, ServedAdapter] = field(default_factory=dict)  # LoRA adapters by name, in the order served
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for settings in self.settings.models:
            ref = settings.model.ref()
            if ref.id not in self.schedulers:
                self._add(settings)
            self.names.setdefault(settings.model.model or ref.name, ref.id)
            for name, adapter in settings.model.loras:  # known by their own names only
                self.adapters[name] = ServedAdapter(self.schedulers[ref.id], name, adapter)

    @property
    def default(self) -> Scheduler:
        return next(iter(self.schedulers.values()))

    def _add(self, settings: SchedulerSettings) -> Scheduler:
        scheduler = Scheduler(settings, self.notify, self._gate)
        self.schedulers[scheduler.model_id] = scheduler
        for name in (scheduler.model_id, scheduler.ref.name):
            self.names.setdefault(name, scheduler.model_id)
        return scheduler

    def get(self, name: str | None) -> Scheduler:
        """The scheduler for a request's `model` (None: the default), made on first use; a 404
        (BadRequest) when no model of that name can be served. Resolving may read the disk: call
        it off the event loop."""
        if name is None:
            return self.default
        if not isinstance(name, str) or not name.strip():
            raise BadRequest("`model` must be a model's name", "invalid_type")
        with self._lock:
            if name in self.adapters:
                return self.adapters[name]  # type: ignore[return-value]  # a Scheduler to its callers
            if name in self.names:
                return self.schedulers[self.names[name]]
            ref = self.admitted(name)
            if ref.id not in self.schedulers:
                base = self.settings.on_request
                assert base is not None  # admitted() takes no new name without it
                self._add(replace(base, model=replace(base.model, model=name)))
            self.names[name] = ref.id
            return self.schedulers[ref.id]

    def admitted(self, name: str) -> ModelRef:
        """What a request's model name resolves to, when requests may have it: a model served
        already (by any of its names), else, unless --listed-only, an alias or a hub repo in the
        cache; a folder or .gguf file only with --allow-model-paths (a request must not make the
        server read, or convert into its cache, whatever file it names). Else a 404."""
        try:
            ref = resolve(name)
        except LmpipeError:
            raise not_found(name) from None
        if ref.id in self.schedulers:
            return ref
        if self.settings.on_request is None or ref.kind in PATH_KINDS and not self.settings.allow_paths:
            raise not_found(name)
        return ref

    def hold(self, make: Callable[[Callable[[object], None], Callable[[str], None]], T]) -> T:
        """Count another kind of model (an embedding model: lmpipe.serve.embeddings.HeldEmbedder)
        against max_models: `make(gate, notify)` builds it; it offers the attributes the gate reads."""
        other = make(self._gate, self.notify)
        with self._lock:
            self.others.append(other)
        return other

    def all(self) -> list[Scheduler]:
        with self._lock:
            return list(self.schedulers.values())

    def _gate(self, loading: Any) -> None:
        """Before `loading` loads: with max_models, make room by asking the least recently used
        idle model to unload (its own worker does, at once if it stays idle), waiting while every
        loaded one is busy. Called holding `loading`'s lock; it never takes another scheduler's."""
        bound = self.settings.max_models
        while bound:
            with self._lock:
                held = [s for s in (*self.schedulers.values(), *self.others)
                        if s is not loading and (s.loaded or s.loading)]
                if len(held) < bound:
                    loading.loading = True  # counted from now on, before its lock is let go
                    for other in held:
                        other.eviction = None  # room was made: nobody else needs to go
                    return
                idle = [s for s in held if s.loaded and s.idle]
                if idle:
                    min(idle, key=lambda s: s.last_used).eviction = \
                        f"to make room for {loading.ref.name}: --max-models {bound}"
            time.sleep(WAIT_S)

    def close(self) -> None:
        for scheduler in self.all():
            scheduler.close()
