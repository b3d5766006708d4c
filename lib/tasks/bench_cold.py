"""lm-bench --cold: whole processes, start-up included, side by side with Python's own start-up.

Issue 18's commands, each a fresh process as a shell pipeline runs it, beside `python -c "import
click"` and `python -c "import tokenizers"` (what a tool cannot start faster than) in the same run:
one untimed round first, so that every command finds the page cache as warm as the others; then
`repetitions` rounds, each running every command once, so that a busy moment on the machine falls
on all of them alike.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends import warm
from ..backends.remote import api_base
from ..engine.decoding import Decoding
from ..models.loading import ModelSettings
from ..models.resolve import DEFAULT_MODEL
from .bench_cases import summary


@dataclass(frozen=True)
class ColdCommand:
    shown: str  # as a person would type it
    argv: tuple[str, ...]
    stdin: bytes = b""
    impl: str = "lmpipe"


def tool(name: str) -> str:
    """The console script beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


def cold_commands(model: str | None, server: str | None) -> list[ColdCommand]:
    """The commands --cold times. With a server: lm-generate with no flags when that server is the
    warm one this model would find (lmpipe.backends.warm), else sent there with --server."""
    model = None if model == DEFAULT_MODEL else model  # the tools' own default: typed as people type them
    m = ("-m", model) if model else ()
    shown_m = f" -m {model}" if model else ""
    commands = [
        ColdCommand('python -c "import click"', (sys.executable, "-c", "import click"), impl="python"),
        ColdCommand('python -c "import tokenizers"', (sys.executable, "-c", "import tokenizers"), impl="python"),
        ColdCommand(f"echo hi | lm-tokenize{shown_m}", (tool("lm-tokenize"), *m), b"hi\n"),
        ColdCommand(f"echo hi | lm-generate -n 1 --no-server{shown_m}",
                    (tool("lm-generate"), "-n", "1", "--no-server", *m), b"hi\n"),
    ]
    if server:
        flags = () if found_warm(model, server) else ("--server", server)
        shown = " ".join(("echo hi | lm-generate -n 1", *flags)) + shown_m
        commands.append(ColdCommand(shown, (tool("lm-generate"), "-n", "1", *flags, *m), b"hi\n"))
    return commands


def found_warm(model: str | None, server: str) -> bool:
    """Whether a plain lm-generate for `model` (default settings) would find `server` by itself."""
    settings = ModelSettings(model)
    found = warm.find(warm.holds(settings.ref().id, settings, Decoding()))
    return found is not None and api_base(found.url) == api_base(server)


def run_once(command: ColdCommand) -> tuple[float, bool]:
    """Seconds from start to exit of one fresh process, and whether it exited 0."""
    start = time.perf_counter()
    done = subprocess.run(command.argv, input=command.stdin, capture_output=True)
    return time.perf_counter() - start, done.returncode == 0


def cold_records(commands: Sequence[ColdCommand], repetitions: int,
                 run: Callable[[ColdCommand], tuple[float, bool]] | None = None) -> list[dict[str, Any]]:
    """One record per command ({impl, case: cold, command, seconds {min, median}, repetitions, ok}),
    then the ratios of each lmpipe command's median to `python -c "import tokenizers"`'s. `run`
    times one process (run_once unless given)."""
    run = run or run_once
    for command in commands:
        run(command)  # untimed: the same warm page cache for every command
    times: dict[str, list[float]] = {c.shown: [] for c in commands}
    ok = dict.fromkeys(times, True)
    for _ in range(repetitions):
        for command in commands:
            seconds, fine = run(command)
            times[command.shown].append(seconds)
            ok[command.shown] &= fine
    records: list[dict[str, Any]] = [{"impl": c.impl, "case": "cold", "command": c.shown,
                                      "seconds": summary(times[c.shown]),
                "repetitions": repetitions, "ok": ok[c.shown]} for c in commands]
    base = next((r for r in records if r["command"] == 'python -c "import tokenizers"'), None)
    if base and base["seconds"]["median"] > 0:
        over = {r["command"]: round(r["seconds"]["median"] / base["seconds"]["median"], 2)
                for r in records if r["impl"] == "lmpipe"}
        records.append({"impl": "ratio", "case": "cold-ratio", "over": 'python -c "import tokenizers"',
                        "medians": over})
    return records
