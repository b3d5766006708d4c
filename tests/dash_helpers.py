"""Shared by the lm-dash tests: drive the app with its pilot, wait for runs, compare records."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

STABLE_STATS = ("input_tokens", "output_tokens", "finish_reason")


def stable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records without their timings (ttft, rates, durations differ from run to run)."""
    out = []
    for r in records:
        r = dict(r)
        if isinstance(r.get("stats"), dict):
            r["stats"] = {k: r["stats"][k] for k in STABLE_STATS if k in r["stats"]}
        out.append(r)
    return out


async def wait_for(pilot, condition, timeout: float = 240.0, step: float = 0.1) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the dashboard")
        await pilot.pause(step)


async def set_inputs(pilot, values: dict[str, str]) -> None:
    """Fill the stage form's fields by option name, then apply it (ctrl+s)."""
    for name, value in values.items():
        pilot.app.screen.query_one(f"#opt-{name}").value = value
    await pilot.pause()
    await pilot.press("ctrl+s")
    await pilot.pause()


async def add_stage(pilot, tool: str, values: dict[str, str]) -> None:
    await pilot.press("ctrl+n")
    await pilot.pause()
    await pilot.press(*tool)
    await pilot.press("enter")
    await pilot.pause()
    await pilot.press("ctrl+e")
    await pilot.pause()
    await set_inputs(pilot, values)


def burst(app, text: str) -> None:
    """Post a key per character to the app at once, as a terminal delivers a fast typist or
    `tmux send-keys`: nothing runs between the keys (pilot.press settles after each one)."""
    from textual import events
    from textual.keys import _character_to_key  # how pilot.press names a character's key

    for character in text:
        key = character if character.isalnum() else _character_to_key(character)
        app.post_message(events.Key(key, character))


def shell(command: str, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], input=data, capture_output=True,
                          env=dict(os.environ), timeout=600)


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
