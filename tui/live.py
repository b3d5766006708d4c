"""Running a pipeline for the dashboard: the real tools as subprocesses, watched at every pipe.

Each stage is the installed tool with its arguments. Between two stages a relay thread reads
the upstream stage's stdout line by line and writes every line to the downstream stage's
stdin, counting records on the way, so the dashboard sees exactly what flows through the pipe
and the downstream stage gets exactly what the shell would give it. The stages' stderr is read
for progress events ({"event": ...} JSON lines) and for their messages.

To show tokens as they are generated, a stage that accepts `--stream` gets it added (unless
the user set it): its token events are shown and taken out of the flow, so the records that go
downstream are the same as without it.

Nothing here touches the interface: every change is reported through `on_update(snapshot)`,
`on_output(line)` and `on_finished(result)`, called from worker threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

import orjson

from lmpipe.cli.commands import executable, spec
from lmpipe.engine.timing import per_second
from lmpipe.records.jsonl import preview

from .pipeline import Pipeline, exit_code

SPARK_SECONDS = 30  # how many one-second buckets the sparkline shows
STDERR_LINES = 20


@dataclass(frozen=True)
class StageSnapshot:
    """What a stage's meter shows, copied out of the live counters."""

    index: int
    tool: str
    records_in: int = 0
    records_out: int = 0
    errors: int = 0
    tokens: int = 0
    records_per_s: float = 0.0
    tokens_per_s: float = 0.0
    spark: tuple[int, ...] = ()
    current: str = ""
    streamed: str = ""
    messages: tuple[str, ...] = ()
    progress: dict | None = None
    exit_code: int | None = None
    running: bool = False


@dataclass(frozen=True)
class RunResult:
    codes: tuple[int | None, ...]
    cancelled: bool
    output: bytes

    @property
    def exit_code(self) -> int:
        return 130 if self.cancelled else exit_code([c if c is not None else 1 for c in self.codes])


@dataclass
class _Meter:
    index: int
    tool: str
    records_in: int = 0
    records_out: int = 0
    errors: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    token_line: int | None = None
    out_times: deque = field(default_factory=lambda: deque(maxlen=4096))
    pending: deque = field(default_factory=deque)  # previews of records sent in, not yet out
    streamed: str = ""
    messages: deque = field(default_factory=lambda: deque(maxlen=STDERR_LINES))
    progress: dict | None = None
    exit_code: int | None = None

    def snapshot(self, now: float) -> StageSnapshot:
        elapsed = max(now - self.started, 1e-6)
        spark = [0] * SPARK_SECONDS
        for t in self.out_times:
            age = int(now - t)
            if 0 <= age < SPARK_SECONDS:
                spark[SPARK_SECONDS - 1 - age] += 1
        given = self.progress.get("rate") if self.progress else None
        rate = given if isinstance(given, (int, float)) else None
        tps = per_second(self.tokens - 1, now - self.first_token) if self.first_token and self.tokens > 1 else 0.0
        return StageSnapshot(
            self.index, self.tool, self.records_in, self.records_out, self.errors, self.tokens,
            float(rate) if rate is not None else self.records_out / elapsed, tps, tuple(spark),
            self.pending[0] if self.pending else "", self.streamed, tuple(self.messages), self.progress, self.exit_code,
            self.exit_code is None,
        )


def watch_args(tool: str, args: tuple[str, ...]) -> tuple[list[str], bool]:
    """The arguments the dashboard runs a stage with, and whether it strips token events."""
    try:
        flags = {o.flag for o in spec(tool).options}
    except LookupError:
        return list(args), False
    if "--stream" in flags and "--stream" not in args:
        return [*args, "--stream"], True
    return list(args), False


def _token_event(line: bytes) -> dict | None:
    if b'"event"' not in line:
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and value.get("event") == "token" else None


class PipelineRun:
    """One run of a pipeline on some input bytes. start(), then cancel() or let it finish."""

    def __init__(self, pipeline: Pipeline, data: bytes,
                 on_update: Callable[[StageSnapshot], object],
                 on_output: Callable[[bytes], object],
                 on_finished: Callable[[RunResult], object]):
        if not pipeline.stages:
            raise ValueError("a pipeline needs at least one stage")
        self.pipeline = pipeline
        self.data = data
        self.on_update, self.on_output, self.on_finished = on_update, on_output, on_finished
        self.meters = [_Meter(i, s.tool) for i, s in enumerate(pipeline.stages)]
        self.procs: list[subprocess.Popen] = []
        self.threads: list[threading.Thread] = []
        self.output = bytearray()
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self._lock = threading.Lock()
        # Progress as JSON events on stderr (lmpipe.records.progress): the meters read them; stdout is untouched.
        # A stage's own --progress wins over the variable.
        self.env = {**os.environ, "LMPIPE_PROGRESS": "json"}

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        strip: list[bool] = []
        for meter, stage in zip(self.meters, self.pipeline.stages, strict=True):
            args, stripping = watch_args(stage.tool, stage.args)
            strip.append(stripping)
            try:
                proc = subprocess.Popen(
                    [executable(stage.tool), *args],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=self.env, start_new_session=True,  # its own process group: cancel reaches everything it started
                )
            except OSError as exc:
                meter.messages.append(f"cannot start {stage.tool}: {exc.strerror}")
                meter.exit_code = 127
                self._kill_all()
                self._report(meter)
                self.done.set()
                self.on_finished(RunResult(tuple(m.exit_code for m in self.meters), False, b""))
                return
            self.procs.append(proc)
        self._spawn(self._feed)
        for i in range(len(self.procs)):
            self._spawn(self._relay, i, strip[i])
            self._spawn(self._read_stderr, i)
        threading.Thread(target=self._finish, daemon=True).start()

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop every stage: SIGINT to each process group, then SIGKILL what is left."""
        self.cancelled.set()
        for proc in self.procs:
            _signal(proc, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._kill_all()
        self.done.wait(10)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    # -- threads -----------------------------------------------------------------------------

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(t)
        t.start()

    def _feed(self) -> None:
        meter, stdin = self.meters[0], self.procs[0].stdin
        assert stdin is not None
        try:
            for line in self.data.splitlines(keepends=True):
                if self.cancelled.is_set():
                    break
                if not line.endswith(b"\n"):
                    line += b"\n"
                stdin.write(line)
                stdin.flush()
                if line.strip():
                    self._sent(meter, line)
        except (BrokenPipeError, OSError):
            pass
        finally:
            _close(stdin)

    def _relay(self, i: int, strip_tokens: bool) -> None:
        meter = self.meters[i]
        source = self.procs[i].stdout
        target = self.procs[i + 1].stdin if i + 1 < len(self.procs) else None
        downstream = self.meters[i + 1] if target is not None else None
        assert source is not None
        try:
            for line in iter(source.readline, b""):
                event = _token_event(line)
                if event is not None:
                    self._token(meter, event)
                    if strip_tokens:
                        continue
                else:
                    self._record(meter, line)
                if downstream is not None:  # not the last stage
                    target = self._forward(target, downstream, line)
                else:
                    with self._lock:
                        self.output += line
                    self.on_output(line)
        finally:
            if target is not None:
                _close(target)

    def _forward(self, target: IO[bytes] | None, meter: _Meter, line: bytes) -> IO[bytes] | None:
        if target is None:
            return None  # downstream is gone: keep draining upstream, as SIGPIPE aside a shell would
        try:
            target.write(line)
            target.flush()
        except (BrokenPipeError, OSError):
            _close(target)
            return None
        if _token_event(line) is None and line.strip():
            self._sent(meter, line)
        return target

    def _sent(self, meter: _Meter, line: bytes) -> None:
        # One record out for every record in, in order (the record contract): the oldest record
        # sent and not yet out is the one the stage is working on.
        with self._lock:
            meter.records_in += 1
            meter.pending.append(preview(line.decode("utf-8", "replace")))
        self._report(meter)

    def _record(self, meter: _Meter, line: bytes) -> None:
        if not line.strip():
            return
        failed = False
        if b'"error"' in line:
            try:
                value = orjson.loads(line)
                failed = isinstance(value, dict) and "error" in value
            except orjson.JSONDecodeError:
                pass
        with self._lock:
            meter.records_out += 1
            meter.errors += failed
            if meter.pending:
                meter.pending.popleft()
            meter.out_times.append(time.monotonic())
        self._report(meter)

    def _token(self, meter: _Meter, event: dict) -> None:
        with self._lock:
            if event.get("line") != meter.token_line:
                meter.token_line, meter.streamed = event.get("line"), ""
            meter.tokens += 1
            meter.first_token = meter.first_token or time.monotonic()
            meter.streamed = (meter.streamed + str(event.get("text", "")))[-2000:]
        self._report(meter)

    def _read_stderr(self, i: int) -> None:
        meter, source = self.meters[i], self.procs[i].stderr
        assert source is not None
        for raw in iter(source.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if not line:
                continue
            event = None
            if line.startswith("{"):
                try:
                    event = orjson.loads(line)
                except orjson.JSONDecodeError:
                    event = None
            with self._lock:
                if isinstance(event, dict) and "event" in event:
                    meter.progress = event
                else:
                    meter.messages.append(line)
            self._report(meter)

    def _finish(self) -> None:
        for t in list(self.threads):
            t.join()
        for meter, proc in zip(self.meters, self.procs, strict=False):  # a stage that failed to start has no process
            meter.exit_code = proc.wait()
            self._report(meter)
        self.done.set()
        self.on_finished(RunResult(tuple(m.exit_code for m in self.meters), self.cancelled.is_set(),
                                   bytes(self.output)))

    # -- helpers -----------------------------------------------------------------------------

    def _report(self, meter: _Meter) -> None:
        with self._lock:
            snapshot = meter.snapshot(time.monotonic())
        self.on_update(snapshot)

    def snapshots(self) -> list[StageSnapshot]:
        now = time.monotonic()
        with self._lock:
            return [m.snapshot(now) for m in self.meters]

    def _kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _signal(proc, signal.SIGKILL)


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _close(stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    try:
        stream.close()
    except (BrokenPipeError, OSError):
        pass
