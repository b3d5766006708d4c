"""A pipeline of lm-* tools: its stages, its shell command line, its file, and a headless run.

The saved file is JSON: {"lmpipe_pipeline": 1, "stages": [{"tool": "lm-generate", "args": [...]}]}.
`lm-dash --run FILE` runs it from stdin to stdout with OS pipes between the stages, exactly as
the shell runs the command line that `shell()` shows.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from lmpipe.cli.commands import executable, spec, values_from_args
from lmpipe.errors import UsageError

FORMAT = "lmpipe_pipeline"
VERSION = 1


@dataclass(frozen=True)
class Stage:
    tool: str
    args: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return [self.tool, *self.args]

    def shell(self) -> str:
        return shlex.join(self.argv())

    def out_field(self) -> str | None:
        """The field this stage writes its answer to (its `--out`), or None when it has none."""
        try:
            tool = spec(self.tool)
        except LookupError:
            return None
        if not any(o.name == "out" for o in tool.options):
            return None
        return values_from_args(tool, list(self.args)).get("out") or None


@dataclass(frozen=True)
class Pipeline:
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    def shell(self) -> str:
        """The command line a shell runs to get the same records."""
        return " | ".join(s.shell() for s in self.stages)

    # Editing returns a new pipeline: the screen keeps one value and redraws from it.
    def add(self, stage: Stage, at: int | None = None) -> Pipeline:
        stages = list(self.stages)
        stages.insert(len(stages) if at is None else at, stage)
        return Pipeline(tuple(stages))

    def remove(self, index: int) -> Pipeline:
        return Pipeline(self.stages[:index] + self.stages[index + 1:])

    def replace(self, index: int, stage: Stage) -> Pipeline:
        return Pipeline(self.stages[:index] + (stage,) + self.stages[index + 1:])

    def move(self, index: int, delta: int) -> Pipeline:
        to = index + delta
        if not (0 <= index < len(self.stages) and 0 <= to < len(self.stages)):
            return self
        stages = list(self.stages)
        stages[index], stages[to] = stages[to], stages[index]
        return Pipeline(tuple(stages))

    def to_json(self) -> bytes:
        body = {FORMAT: VERSION, "stages": [{"tool": s.tool, "args": list(s.args)} for s in self.stages]}
        return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Pipeline:
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UsageError(f"not a pipeline file: {exc}") from None
        if not isinstance(body, dict) or body.get(FORMAT) != VERSION or not isinstance(body.get("stages"), list):
            raise UsageError(f"not a pipeline file (needs {{\"{FORMAT}\": {VERSION}, \"stages\": [...]}})")
        stages = []
        for s in body["stages"]:
            if not isinstance(s, dict) or not isinstance(s.get("tool"), str) or not s["tool"].startswith("lm-"):
                raise UsageError(f"bad stage {s!r}: needs a `tool` named lm-*")
            args = s.get("args", [])
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise UsageError(f"bad stage {s!r}: `args` must be a list of strings")
            stages.append(Stage(s["tool"], tuple(args)))
        return cls(tuple(stages))

    def save(self, path: str | Path) -> None:
        target = Path(path).expanduser()
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(self.to_json())
        tmp.replace(target)

    @classmethod
    def load(cls, path: str | Path) -> Pipeline:
        try:
            return cls.from_json(Path(path).expanduser().read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def exit_code(codes: list[int]) -> int:
    """The pipeline's exit code, as bash's `set -o pipefail` gives it: the last stage that failed."""
    failed = [c for c in codes if c != 0]
    return failed[-1] if failed else 0


def run_headless(pipeline: Pipeline) -> int:
    """Run the stages with OS pipes between them, from this process's stdin to its stdout."""
    if not pipeline.stages:
        raise UsageError("the pipeline has no stages")
    procs: list[subprocess.Popen] = []
    upstream = None
    try:
        for i, stage in enumerate(pipeline.stages):
            last = i == len(pipeline.stages) - 1
            proc = subprocess.Popen(
                [executable(stage.tool), *stage.args],
                stdin=upstream if upstream is not None else sys.stdin,
                stdout=None if last else subprocess.PIPE,
            )
            if upstream is not None:
                upstream.close()  # the next stage holds it now; EOF and SIGPIPE reach the stages
            upstream = proc.stdout
            procs.append(proc)
    except OSError as exc:
        for p in procs:
            p.kill()
        raise UsageError(f"cannot start {stage.tool}: {exc.strerror}") from None
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the terminal sent SIGINT to every stage as well
        for p in procs:
            p.wait()
        return 130
    return exit_code(codes)
