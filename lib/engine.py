"""The server's engine: one model kept warm, a bounded queue, and a worker that batches.

Requests wait in a bounded queue (full: the caller answers 503). One worker thread takes
what is waiting, up to `max_batch` requests with the same sampling settings, and runs them
through lmpipe.generation's one loop together, routing each token to its request. A request
whose client went away is dropped from routing at once, and a batch whose clients all went
away stops at the next token. After `keep_alive` seconds without a request the model is
unloaded; the next request loads it again.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from .generation import Completion, Decoding, Token, generate
from .loading import LoadedModel, ModelSettings
from .sampling import Sampling

Emit = Callable[[Any], None]  # a Token, a Completion, or an Exception; called on the worker thread


@dataclass
class Job:
    ids: list[int]
    sampling: Sampling
    emit: Emit
    grammar: str | None = None  # llguidance's grammar the answer must follow (lmpipe.constrain); None: free
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class EngineSettings:
    model: ModelSettings = field(default_factory=ModelSettings)
    decoding: Decoding = field(default_factory=Decoding)
    max_batch: int = 8
    max_queue: int = 64
    keep_alive: float = 300.0  # seconds idle before the model is unloaded; 0: never


def batch_key(sampling: Sampling) -> Sampling:
    """Requests that may share a batch: greedy ones whatever their seed (greedy never reads it)."""
    return replace(sampling, seed=0) if sampling.greedy else sampling


class Engine:
    def __init__(self, settings: EngineSettings, notify: Callable[[str], None] = lambda m: None):
        from .loading import load_tokenizer

        self.settings = settings
        self.notify = notify
        self.ref = settings.model.ref()
        self.tokenizer = load_tokenizer(self.ref)  # prompts are checked before they queue
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=settings.max_queue)
        self.lm: LoadedModel | None = None
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
                from .loading import load

                self.notify(f"loading {self.ref.name}")
                self.lm = load(self.settings.model, self.notify)
            self.last_used = time.monotonic()
            return self.lm

    def context_length(self) -> int | None:
        from .tasks.generate import context_length

        return context_length(self.model())

    def submit(self, job: Job) -> None:
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
            import gc

            gc.collect()
            self.notify(f"unloaded {self.ref.name} after {keep:g} s idle")

    def _take(self) -> list[Job]:
        try:
            first = self.jobs.get(timeout=0.5)
        except queue.Empty:
            return []
        batch = [first]
        while len(batch) < self.settings.max_batch:
            try:
                batch.append(self.jobs.get_nowait())
            except queue.Empty:
                break
        return batch

    def _work(self) -> None:
        while not self._stop.is_set():
            batch = [job for job in self._take() if not job.cancelled.is_set()]
            if not batch:
                self._unload_if_idle()
                continue
            groups: dict[Sampling, list[Job]] = {}
            for job in batch:
                groups.setdefault(batch_key(job.sampling), []).append(job)
            for sampling, jobs in groups.items():
                self._run(sampling, jobs)
            self.last_used = time.monotonic()

    def _run(self, sampling: Sampling, jobs: list[Job]) -> None:
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


__all__ = ["Completion", "Engine", "EngineSettings", "Job", "Token"]
