"""The server's scheduler: one model kept warm, a bounded queue, and a worker that batches.

Requests wait in a bounded queue (full: the caller answers 503). One worker thread serves
them. For models the fast path knows (lmpipe.models.fastpath), batching is continuous
(lmpipe.engine.batching): between two decode steps, waiting requests join the running batch up to
`max_batch` rows, and finished or abandoned ones leave it at once. For other models the
worker takes what is waiting, up to `max_batch` requests with the same sampling settings,
and runs them through lmpipe.engine.generation's loop together, routing each token to its request;
a batch whose clients all went away stops at the next token. After `keep_alive` seconds
without a request the model is unloaded; the next request loads it again.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..models.loading import LoadedModel, ModelSettings
from .generation import Completion, Decoding, Token, generate
from .sampling import Sampling

Emit = Callable[[Any], None]  # a Token, a Completion, or an Exception; called on the worker thread


@dataclass
class GenerationRequest:
    ids: list[int]
    sampling: Sampling
    emit: Emit
    grammar: str | None = None  # llguidance's grammar the answer must follow (lmpipe.engine.constrain); None: free
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class SchedulerSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    decoding: Decoding = field(default_factory=Decoding)
    max_batch: int = 8
    max_queue: int = 64
    keep_alive: float = 300.0  # seconds idle before the model is unloaded; 0: never


def batch_key(sampling: Sampling) -> Sampling:
    """Requests that may share a batch: greedy ones whatever their seed (greedy never reads it)."""
    return replace(sampling, seed=0) if sampling.greedy else sampling


class Scheduler:
    def __init__(self, settings: SchedulerSettings, notify: Callable[[str], None] = lambda m: None):
        from ..models.loading import load_tokenizer

        self.settings = settings
        self.notify = notify
        self.ref = settings.model.ref()
        self.tokenizer = load_tokenizer(self.ref)  # prompts are checked before they queue
        self.jobs: queue.Queue[GenerationRequest] = queue.Queue(maxsize=settings.max_queue)
        self.lm: LoadedModel | None = None
        self.batcher: Any = None  # lmpipe.engine.batching.Batcher while a fast-path model is loaded
        self.last_used = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="lmpipe-engine", daemon=True)
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
                from ..models.loading import load

                self.notify(f"loading {self.ref.name}")
                self.lm = load(self.settings.model, self.notify)
            self.last_used = time.monotonic()
            return self.lm

    def context_length(self) -> int | None:
        from ..models.loading import context_length

        return context_length(self.model())

    def submit(self, job: GenerationRequest) -> None:
        """Queue a job; raises queue.Full when the queue is at its bound."""
        self.last_used = time.monotonic()
        self.jobs.put_nowait(job)

    def close(self) -> None:
        self._stop.set()

    def _unload_if_idle(self) -> None:
        keep = self.settings.keep_alive
        if keep and self.lm is not None and time.monotonic() - self.last_used > keep:
            with self._lock:
                self.lm = None
                self.batcher = None
            import gc

            gc.collect()
            self.notify(f"unloaded {self.ref.name} after {keep:g} s idle")

    def _take(self, limit: int, wait: bool = True) -> list[GenerationRequest]:
        batch: list[GenerationRequest] = []
        if wait:
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

    def _continuous(self) -> bool:
        """Whether this engine batches continuously (its model is loaded and the fast path knows it)."""
        from .decoding import uses_fast_path

        lm = self.lm
        if lm is None or not uses_fast_path(lm.model, self.settings.decoding):
            return False
        if self.batcher is None:
            from .batching import Batcher

            self.batcher = Batcher(lm.model, lm.tokenizer, self.settings.max_batch)
        return True

    def _work(self) -> None:
        while not self._stop.is_set():
            if self._continuous():
                self._continue()
                continue
            batch = self._take(self.settings.max_batch)
            if not batch:
                self._unload_if_idle()
                continue
            try:
                self.model()  # loaded now, so the first batch knows whether it may batch continuously
            except Exception as exc:
                for job in batch:
                    job.emit(exc)
                continue
            if self._continuous():
                self._continue(batch)
                continue
            groups: dict[Sampling, list[GenerationRequest]] = {}
            for job in batch:
                groups.setdefault(batch_key(job.sampling), []).append(job)
            for sampling, jobs in groups.items():
                self._run(sampling, jobs)
            self.last_used = time.monotonic()

    def _continue(self, waiting: list[GenerationRequest] | None = None) -> None:
        """Admit what is waiting into free rows, then one decode step for all live rows."""
        from .constrain import grammar_processors

        batcher = self.batcher
        if waiting is None:
            waiting = self._take(batcher.free, wait=not batcher.live)
        for job in waiting:
            try:
                lm = self.model()  # marks the model used
                batcher.admit(job, tuple(grammar_processors(lm.model, lm.tokenizer, [job.grammar])))
            except Exception as exc:  # this request fails; the others go on
                job.emit(exc)
        if not batcher.live:
            self._unload_if_idle()
            return
        try:
            batcher.step()
        except Exception as exc:  # a failed step fails its requests, never the server
            batcher.fail(exc)
        self.last_used = time.monotonic()

    def _run(self, sampling: Sampling, jobs: list[GenerationRequest]) -> None:
        try:
            from .constrain import grammar_processors

            lm = self.model()
            constraints = grammar_processors(lm.model, lm.tokenizer, [j.grammar for j in jobs])
            events = generate(lm.model, lm.tokenizer, [j.ids for j in jobs], sampling, device=lm.device,
                              constraints=constraints, decoding=self.settings.decoding)
            for event in events:
                job = jobs[event.row]
                if not job.cancelled.is_set():
                    job.emit(event)
                if all(j.cancelled.is_set() for j in jobs):
                    events.close()  # nobody is listening: free the worker now
                    break
        except Exception as exc:  # a failed batch fails its requests, never the server
            for job in jobs:
                job.emit(exc)


__all__ = ["Completion", "Scheduler", "SchedulerSettings", "GenerationRequest", "Token"]
