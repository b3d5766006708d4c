"""A warm server found without flags (issue 18, acceptance 4): a running lm-serve records itself in
lmpipe's home; a plain lm-generate for the same model and settings answers through it with the
same records, says so once on a terminal, and loads nothing; --no-server loads the model here; a
server killed without stopping leaves a record that the next run removes, working in-process."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess

import pytest

from conftest import BIN, jsonl, run_tool
from serve_helpers import Server
from test_fast_start import probe

LINES = b'The quick brown fox\n{"text": "Paris is the capital of", "id": 7}\n{broken\n'
TIMING = ("ttft_s", "tokens_per_s", "total_s")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home of its own, so that no other test's server is found (the servers started here inherit it)."""
    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def records(stdout: bytes) -> list[dict]:
    out = jsonl(stdout)
    for r in out:
        for key in TIMING:
            r.get("stats", {}).pop(key, None)
    return out


def entries(home) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((home / "servers").glob("*.json"))]


def args(model) -> tuple[str, ...]:
    return ("-m", str(model), "-n", "6", "--seed", "3")


def test_a_plain_run_answers_through_the_running_server(home, tiny_llama):
    local = run_tool("lm-generate", *args(tiny_llama), "--no-server", input=LINES)
    assert local.returncode == 1  # the broken line is an error record
    server = Server(tiny_llama)
    try:
        (entry,) = entries(home)
        assert entry["url"] == server.url and entry["pid"] == server.proc.pid
        assert [held["model"] for held in entry["holds"]] == [str(tiny_llama)]

        proc, heavy = probe("lm-generate", *args(tiny_llama), input=LINES)
        assert proc.returncode == 1 and heavy == ""  # answered without loading anything here
        assert records(proc.stdout) == records(local.stdout)
        assert b"lm-serve" not in proc.stderr  # in a pipe it says nothing

        forced, heavy = probe("lm-generate", *args(tiny_llama), "--no-server", input=b"hi\n")
        assert forced.returncode == 0 and heavy == "torch,transformers"
        other, heavy = probe("lm-generate", *args(tiny_llama), "--cache", "dynamic", input=b"hi\n")
        assert other.returncode == 0 and heavy == "torch,transformers"  # other settings: not the server's

        primary, replica = pty.openpty()  # stderr on a terminal, stdout in a pipe
        try:
            shown = subprocess.run([str(BIN / "lm-generate"), *args(tiny_llama), "--progress", "none"],
                                   input=b"hi\nho\n",
                                   stdout=subprocess.PIPE, stderr=replica, env=dict(os.environ), timeout=300)
            os.close(replica)
            said = b""
            while True:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                said += chunk
        finally:
            os.close(primary)
        assert shown.returncode == 0 and len(jsonl(shown.stdout)) == 2
        assert said.decode().splitlines() == [
            f"lm-generate: answering through the lm-serve running at {server.url} "
            "(--no-server: load the model here)"]
    finally:
        server.stop()
    assert entries(home) == []  # a server that stops removes its record


def test_a_server_gone_without_stopping_costs_one_refused_connect(home, tiny_llama):
    local = run_tool("lm-generate", *args(tiny_llama), "--no-server", input=LINES)
    server = Server(tiny_llama)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(timeout=30)
    assert [e["url"] for e in entries(home)] == [server.url]  # left behind
    result = run_tool("lm-generate", *args(tiny_llama), input=LINES)
    assert result.returncode == 1 and records(result.stdout) == records(local.stdout)
    assert result.stderr == local.stderr  # nothing about servers
    assert entries(home) == []  # removed by the run that found it dead


def test_lm_chat_finds_the_running_server_too(home, tiny_llama):
    script = b"The quick\nbrown fox\n"
    chat = ("-m", str(tiny_llama), "-n", "6", "--seed", "3")
    local = run_tool("lm-chat", *chat, "--no-server", input=script)
    assert local.returncode == 0, local.stderr
    server = Server(tiny_llama)
    try:
        proc, heavy = probe("lm-chat", *chat, input=script)
        assert proc.returncode == 0 and heavy == ""  # answered without loading anything here
        assert records(proc.stdout) == records(local.stdout)
        forced, heavy = probe("lm-chat", *chat, "--no-server", input=script)
        assert forced.returncode == 0 and heavy == "torch,transformers"
    finally:
        server.stop()
