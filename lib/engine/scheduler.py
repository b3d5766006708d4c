"""The server's scheduler: one model kept warm, a bounded queue, and a worker that feeds the one loop.

Requests wait in a bounded queue (full: the caller answers 503). One worker thread serves
them through lmpipe.engine.loop's generation loop, each request a row with its own sampling, stop
strings and grammar. For models the fast path knows (lmpipe.models.fastpath), batching is continuous
(lmpipe.engine.batching's rows): between two decode steps, waiting requests join the running batch up
to `max_batch` rows, and finished or abandoned ones leave it at once; recent prompts' keys and
values are kept for the next prompt that shares their start. For other models the model runner is a
left-padded batch (lmpipe.engine.decoding): the worker admits what is waiting, up to `max_batch`
requests with the same sampling settings, and steps them together to the end; an abandoned
request's row leaves it, and a batch whose clients all went away stops at the next token.
After `keep_alive` seconds without a request the model is unloaded; the next request loads it again.
A server holding several models (lmpipe.serve.roster) gives each its own scheduler and a `gate`
that every load passes first, which may ask another scheduler to unload its model (`eviction`:
its worker does it at its next idle moment) to keep the number loaded within bounds.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..models.adapters import stack_of
from ..models.loading import LoadedModel, ModelSettings, context_length, load, load_tokenizer
from .batching import PrefixCache, PrefixCounts
from .constrain import row_constraints
from .decoding import Decoding, settled
from .events import Completion, Token
from .generation import runner_for
from .loop import Loop, Request, eos_ids, pad_id
from .preparation import Preparation
from .sampling import Sampling


@dataclass(frozen=True)
class SchedulerSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    decoding: Decoding = field(default_factory=Decoding)
    max_batch: int = 8
    max_queue: int = 64
    keep_alive: float = 300.0  # seconds idle before the model is unloaded; 0: never
    # --chat-template: a template's source or a name of the model's (lmpipe.serve renders it)
    chat_template: str | None = None


@dataclass(frozen=True)
class Occupancy:
    """What the scheduler holds now (lm-serve's /metrics): requests decoding and waiting, the
    share of the KV cache their tokens fill, and the prefix cache's counts since it started."""

    running: int
    waiting: int
    kv_cache_usage: float  # running rows' tokens over max_batch × the context (0 to 1); rows over max_batch without one
    prefix_queries: int
    prefix_hits: int


def batch_key(sampling: Sampling) -> Sampling:
    """Requests that may share a batch: greedy ones whatever their seed (greedy never reads it)."""
    return replace(sampling, seed=0) if sampling.greedy else sampling


class Scheduler:
    def __init__(self, settings: SchedulerSettings, notify: Callable[[str], None] = lambda m: None,
                 gate: Callable[[Scheduler], None] = lambda s: None):
        self.settings = settings
        self.notify = notify
        self.gate = gate  # called before each load, holding this scheduler's lock (lmpipe.serve.roster)
        self.loading = False  # a load is under way (the gate counts it as loaded)
        # Why another model needs this one's room (lmpipe.serve.roster); the worker unloads the
        # model at its next idle moment, as it does after keep_alive: only the worker admits and
        # steps rows, so only it can tell that none is on its way into the loop.
        self.eviction: str | None = None
        self.ref = settings.model.ref()
        self.tokenizer = load_tokenizer(self.ref)  # prompts are checked before they queue
        self.jobs: queue.Queue[Request] = queue.Queue(maxsize=settings.max_queue)
        self.lm: LoadedModel | None = None
        self.loop: Loop | None = None  # the one loop over the loaded model's rows
        # taken from the queue, waiting for a batch of their own (static batches)
        self.held: list[Request] = []
        self.last_used = time.monotonic()
        self.prefix_counts = PrefixCounts()  # across loads: the caches go with the model
        self._context: int | None = None  # the loaded model's, once read
        self.decoding = settings.decoding  # the way it runs ("auto" decided) once the model is loaded
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="lmpipe-scheduler", daemon=True)
        self._worker.start()

    @property
    def model_id(self) -> str:
        return self.ref.id

    @property
    def loaded(self) -> bool:
        return self.lm is not None

    def model(self) -> LoadedModel:
        with self._lock:
            if self.lm is None:
                self.gate(self)
                self.loading = True
                try:
                    self.notify(f"loading {self.ref.name}")
                    self.lm = load(self.settings.model, self.notify)
                finally:
                    self.loading = False
            self.last_used = time.monotonic()
            return self.lm

    @property
    def idle(self) -> bool:
        """Nothing running, queued or held back."""
        loop = self.loop
        return not (loop is not None and loop.live) and not self.jobs.qsize() and not self.held

    def _drop(self) -> None:
        """Let the model go (the caller holds the lock); its memory returns once nothing holds it."""
        self.lm = None
        self.loop = None
        gc.collect()

    @property
    def max_model_len(self) -> int | None:
        """The model's context: --max-model-len when given, else the config's once loaded (None before)."""
        return self.settings.model.ctx_size or self._context

    def context_length(self) -> int | None:
        return context_length(self.model())

    def preparation(self) -> Preparation:
        """What the loaded model checks requests against (lmpipe.engine.preparation); loads it if it is not."""
        return Preparation.of(self.model())

    def occupancy(self) -> Occupancy:
        """Read from any thread: the live rows are copied before they are counted."""
        loop = self.loop
        rows = list(loop.live) if loop is not None else []
        held = sum(row.state.prompt_len + len(row.state.times) for row in rows)
        room = self.settings.max_batch * (self._context or 0)
        usage = held / room if room else len(rows) / self.settings.max_batch
        return Occupancy(len(rows), self.jobs.qsize() + len(self.held), min(usage, 1.0),
                         self.prefix_counts.queries, self.prefix_counts.hits)

    def submit(self, job: Request) -> None:
        """Queue a job; raises queue.Full when the queue is at its bound."""
        self.last_used = time.monotonic()
        self.jobs.put_nowait(job)

    def close(self) -> None:
        self._stop.set()

    def _unload_if_idle(self) -> None:
        """Called by the worker with nothing running or waiting: unload after keep_alive, or when evicted."""
        keep, why = self.settings.keep_alive, self.eviction
        expired = keep and time.monotonic() - self.last_used > keep
        if self.lm is not None and (why or expired):
            with self._lock:
                self._drop()
            self.notify(f"unloaded {self.ref.name} ({why})" if why else
                        f"unloaded {self.ref.name} after {keep:g} s idle")
        self.eviction = None

    def _take(self, limit: int, wait: bool = True) -> list[Request]:
        batch: list[Request] = self.held[:limit]
        del self.held[:limit]
        if wait and not batch:
            try:
                batch.append(self.jobs.get(timeout=0.5))
            except queue.Empty:
                return []
        while len(batch) < limit:
            try:
                batch.append(self.jobs.get_nowait())
            except queue.Empty:
                break
        return [job for job in batch if not job.cancelled.is_set()]

    def _rows(self) -> Loop:
        """The generation loop over the loaded model (loaded now if it is not)."""
        lm = self.model()
        with self._lock:
            if self.loop is None:
                eos = eos_ids(lm.model, lm.tokenizer)
                self.decoding = settled(self.settings.decoding, lm.model, self.notify)
                runner = runner_for(lm.model, self.decoding, self.settings.max_batch, lm.device,
                                    pad_id(lm.tokenizer, eos), prefixes=PrefixCache(counts=self.prefix_counts),
                                    processor=lm.processor)
                if self.decoding.compile and not runner.compiled:  # the manifest names the step that runs
                    self.notify("lmpipe: --compile: the fast path's rows join and leave a running batch, "
                                "so its step runs uncompiled")
                    self.decoding = replace(self.decoding, compile=False)
                self._context = context_length(lm)
                self.loop = Loop(runner, lm.tokenizer, eos)
            return self.loop

    def _work(self) -> None:
        while not self._stop.is_set():
            loop = self.loop
            busy = loop is not None and bool(loop.live)
            room = loop.free if loop is not None else self.settings.max_batch
            waiting = self._take(room, wait=not busy) if room else []
            if waiting:
                self._admit(waiting)
            elif not busy:
                self._unload_if_idle()
                continue
            loop = self.loop
            if loop is not None and loop.live:
                try:
                    loop.step()
                except Exception as exc:  # a failed step fails its requests, never the server
                    loop.fail(exc)
            self.last_used = time.monotonic()

    def _admit(self, waiting: list[Request]) -> None:
        """Waiting jobs into the loop: one by one where rows join a running batch (one request's
        failure is its own), else those sharing the first one's sampling settings as one batch."""
        try:
            loop = self._rows()
        except Exception as exc:
            for job in waiting:
                job.emit(exc)
            return
        joins = loop.runner.joins
        # one batch: the same sampling, with images or not; a row that scores its prompt is prefilled alone
        if not joins:
            def key_of(job: Request) -> tuple[Any, ...]:
                return batch_key(job.sampling), job.echo, job.inputs is None

            key = key_of(waiting[0])
            same = [job for job in waiting if key_of(job) == key][: 1 if key[1] else None]
            self.held[:0] = [job for job in waiting if all(job is not kept for kept in same)]
            waiting = same
        batch: list[tuple[Request, Request]] = []
        for job in waiting:
            try:
                request = self._request(job)
                if joins:
                    loop.admit([request])
                else:
                    batch.append((job, request))
            except Exception as exc:  # this request fails; the others go on
                job.emit(exc)
        if batch:
            try:
                loop.admit([request for _, request in batch])
            except Exception as exc:  # a failed batch fails its requests, never the server
                for job, _ in batch:
                    job.emit(exc)

    def _request(self, job: Request) -> Request:
        """The queued job as a row: its grammar made its constraints, its LoRA adapter's name its slot."""
        lm = self.model()  # marks the model used
        constraints = tuple(row_constraints(lm.model, lm.tokenizer, job.grammar))
        slot = None
        if job.lora is not None:
            slot = stack_of(lm.model).slot(job.lora)  # type: ignore[union-attr]  # loaded with its loras
        return replace(job, constraints=constraints, adapter=slot)


__all__ = ["Completion", "Occupancy", "Request", "Scheduler", "SchedulerSettings", "Token"]
