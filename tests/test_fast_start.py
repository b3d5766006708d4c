"""Tools that need no model weights never import torch or transformers (issue 18, acceptance 1).

Each tool runs in a fresh Python process, entered through its installed console-script entry
point; an atexit hook, run after the tool's own exit, writes the torch and transformers modules
then in sys.modules to stderr. The records are checked too, so a tool that failed early (and so
imported nothing) cannot pass.
"""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from conftest import jsonl
from serve_helpers import Server

HEAVY = ("torch", "transformers")
PROBE = f"""
import atexit, os, sys
from importlib.metadata import entry_points

def report():
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
    os.write(2, ("\\nheavy-modules: " + ",".join(loaded) + "\\n").encode())

atexit.register(report)
tool, *sys.argv[1:] = sys.argv[1:]
sys.argv[0] = tool
(main,) = [e for e in entry_points(group="console_scripts") if e.name == tool]
main.load()()
"""


def probe(tool: str, *args: str, input: bytes = b"") -> tuple[subprocess.CompletedProcess, str]:
    """Run `tool` as its console script does; its records, and the heavy modules loaded at exit."""
    proc = subprocess.run([sys.executable, "-c", PROBE, tool, *args], input=input, capture_output=True,
                          env=dict(os.environ), timeout=300)
    marker = [line for line in proc.stderr.decode().splitlines() if line.startswith("heavy-modules:")]
    assert marker, f"the probe did not run to the end: {proc.stderr.decode()}"
    return proc, marker[-1].removeprefix("heavy-modules:").strip()


def test_the_probe_sees_torch_when_a_tool_loads_a_model(tiny_llama):
    """The check itself: in-process generation imports both."""
    proc, heavy = probe("lm-generate", "-m", str(tiny_llama), "-n", "2", input=b'{"text": "hi"}\n')
    assert proc.returncode == 0, proc.stderr.decode()
    assert heavy == "torch,transformers"


@pytest.mark.parametrize("which", ["embedded", "tiny_llama"])
def test_lm_tokenize(which, request):
    model = "smollm2" if which == "embedded" else str(request.getfixturevalue("tiny_llama"))
    request.getfixturevalue("embedded")
    chat = b'{"messages": [{"role": "user", "content": "Hello"}]}\n'  # rendered with the chat template
    proc, heavy = probe("lm-tokenize", "-m", model, input=b'{"text": "Hello, world"}\n' + chat)
    assert proc.returncode == 0, proc.stderr.decode()
    text, chat_record = jsonl(proc.stdout)
    assert text["count"] > 0 and chat_record["prompt"].endswith("assistant\n")
    assert heavy == ""


def test_lm_tokenize_decode(embedded):
    proc, heavy = probe("lm-tokenize", "--decode", input=b'{"ids": [19556, 28]}\n')
    assert proc.returncode == 0 and jsonl(proc.stdout)[0]["text"]
    assert heavy == ""


def test_lm_chunk(embedded):
    text = "Pipes connect small tools. " * 40
    proc, heavy = probe("lm-chunk", "-n", "32", "--overlap", "4", input=orjson.dumps({"text": text}) + b"\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert len(jsonl(proc.stdout)) > 3
    assert heavy == ""


def test_lm_template():
    proc, heavy = probe("lm-template", "--system", "Answer in {{ lang }}.", "{{ text }}",
                        input=b'{"text": "hi", "lang": "French"}\n')
    assert proc.returncode == 0, proc.stderr.decode()
    assert jsonl(proc.stdout)[0]["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert heavy == ""


def test_lm_stats():
    record = {"text": "hi", "generated": "x", "stats": {"ttft_s": 0.1, "tokens_per_s": 10.0, "total_s": 0.5},
              "manifest": {"model": "m"}}
    proc, heavy = probe("lm-stats", input=orjson.dumps(record) + b"\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert jsonl(proc.stdout)[0]["records"] == 1
    assert heavy == ""


def test_lm_generate_through_a_server(tiny_llama):
    server = Server(tiny_llama)
    try:
        proc, heavy = probe("lm-generate", "--server", server.url, "-n", "3", input=b'{"text": "hi"}\n')
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr.decode()
    assert jsonl(proc.stdout)[0]["stats"]["output_tokens"] == 3
    assert heavy == ""
