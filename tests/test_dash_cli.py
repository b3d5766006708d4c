"""lm-dash's entry point on a real terminal (a pty): stdin from a pipe is the input, the keyboard
comes from the terminal, and the last run's output goes to stdout on exit; its options are checked
before it opens."""

from __future__ import annotations

import os
import pty
import select
import time
from pathlib import Path

import orjson
from conftest import BIN

from lmpipe.tui.pipeline import Pipeline, Stage


def read_until(fd: int, needle: bytes, seen: bytearray, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return needle in seen
            if not chunk:
                return needle in seen
            seen += chunk
            if needle in seen:
                return True
    return False


def test_piped_stdin_is_the_input_and_the_output_goes_to_stdout(tmp_path, tiny_llama):
    saved = tmp_path / "p.json"
    Pipeline((Stage("lm-tokenize", ("--model", str(tiny_llama), "--no-special")),)).save(saved)
    out = tmp_path / "out.jsonl"
    read_end, write_end = os.pipe()
    os.write(write_end, b"from the pipe\n")
    os.close(write_end)

    pid, master = pty.fork()
    if pid == 0:  # the child: stdin a pipe, stdout a file, stderr the terminal (where Textual draws)
        os.dup2(read_end, 0)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TERM": "xterm-256color"}
        os.execve(str(BIN / "lm-dash"), ["lm-dash", str(saved)], env)
    os.close(read_end)
    os.set_blocking(master, False)
    seen = bytearray()
    try:
        assert read_until(master, b"Pipeline", seen, 120), seen[-2000:]
        time.sleep(1)
        os.write(master, b"\x12")  # ctrl+r: run
        assert read_until(master, b"exit 0", seen, 240), seen[-2000:]
        os.write(master, b"\x11")  # ctrl+q: quit
        read_until(master, b"\0never", seen, 10)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 0
    [record] = [orjson.loads(line) for line in Path(out).read_bytes().splitlines()]
    assert record["text"] == "from the pipe" and record["count"] == len(record["ids"]) > 0


def test_context_options_are_checked_before_the_dashboard_opens():
    """lm-dash's --ctx-size, --rope-scaling and --rope-factor size the chat and tokens screens'
    models (tests/test_dash_chat.py drives the chat with one): a wrong set is a usage error."""
    from click.testing import CliRunner

    from lmpipe.bin.dash import main

    result = CliRunner().invoke(main, ["--ctx-size", "512", "--rope-scaling", "yarn"], catch_exceptions=False)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "lm-dash: error: --rope-scaling and --rope-factor go together\n"
