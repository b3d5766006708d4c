"""A warm server found without flags (issue 18, acceptance 4): a running lm-serve records itself in
lmpipe's home; a plain lm-generate for the same model and settings answers through it with the
same records, says so once on stderr (even in a pipe), and loads nothing; --no-server loads the model here; a
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
        # Even in a pipe it says once where the records came from.
        said = f"lm-generate: answering through the lm-serve running at {server.url} (--no-server: load the model here)"
        assert proc.stderr.decode().splitlines()[0] == said and proc.stderr.decode().count("lm-serve") == 1

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


def plant(home, name: str, url: str, pid: int, mode: int = 0o600) -> os.PathLike:
    folder = home / "servers"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps({"url": url, "pid": pid, "token": "t", "holds": []}))
    path.chmod(mode)
    return path


def test_only_entries_of_this_user_mode_0600_live_and_loopback_are_used(home):
    import socket

    from lmpipe.backends import warm

    with socket.socket() as listener:  # something listens at each planted URL: only the checks can refuse them
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        good = plant(home, "good.json", url, os.getpid())
        assert [e["url"] for e in warm.running()] == [url]
        good.unlink()
        dead = subprocess.Popen(["true"])
        dead.wait()
        gone = plant(home, "dead.json", url, dead.pid)
        plant(home, "lax.json", url, os.getpid(), mode=0o644)
        plant(home, "remote.json", "http://192.0.2.1:8080", os.getpid())
        if os.geteuid() == 0:  # only root can give a file to another user
            os.chown(plant(home, "other-owner.json", url, os.getpid()), 65534, -1)
        assert warm.running() == []
        assert not gone.exists()  # a dead server's entry is removed on the way
        assert sorted(p.name for p in (home / "servers").iterdir()) == sorted(
            ["lax.json", "remote.json"] + (["other-owner.json"] if os.geteuid() == 0 else []))
        (home / "servers").chmod(0o777)
        plant(home, "good.json", url, os.getpid())
        assert [e["url"] for e in warm.running()] == [url]
        assert oct((home / "servers").stat().st_mode & 0o777) == "0o700"  # put back to this user's alone


def test_a_server_with_an_api_key_serves_the_tools_that_found_it(home, tiny_llama):
    import httpx

    server = Server(tiny_llama, "--api-key", "sk-secret")
    try:
        (entry,) = entries(home)
        assert oct((home / "servers").stat().st_mode & 0o777) == "0o700"
        assert oct(next((home / "servers").glob("*.json")).stat().st_mode & 0o777) == "0o600"
        assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {entry['token']}"},
                         timeout=30).status_code == 200
        proc, heavy = probe("lm-generate", *args(tiny_llama), input=b"hi\n")
        assert proc.returncode == 0 and heavy == ""  # answered there, with the entry's token
        assert len(jsonl(proc.stdout)) == 1 and "error" not in jsonl(proc.stdout)[0]
        given = run_tool("lm-generate", "--server", server.url, "-m", str(tiny_llama), "--api-key", "sk-secret",
                         "-n", "2", input=b"hi\n")
        assert given.returncode == 0 and "error" not in jsonl(given.stdout)[0]
        env = {"LMPIPE_API_KEY": "", "OPENAI_API_KEY": "sk-secret"}
        from_openai = run_tool("lm-generate", "--server", server.url, "-m", str(tiny_llama), "-n", "2", input=b"hi\n",
                               env=env)
        assert from_openai.returncode == 0 and "error" not in jsonl(from_openai.stdout)[0]
        refused = run_tool("lm-generate", "--server", server.url, "-m", str(tiny_llama), "-n", "2", input=b"hi\n",
                           env={"LMPIPE_API_KEY": "", "OPENAI_API_KEY": ""})
        assert refused.returncode == 1 and refused.stdout == b""
        assert refused.stderr.decode() == (f"lm-generate: error: the server at {server.url}/v1 wants an API key: give "
                                           "it with --api-key (or LMPIPE_API_KEY, or OPENAI_API_KEY)\n")
    finally:
        server.stop()
