"""lm-bench --cold: which commands it times and the records it writes (never its timings: the
processes are replaced by a stand-in clock here, so no benchmark runs in the test suite)."""

from __future__ import annotations

import socket
import sys

import orjson
from click.testing import CliRunner

from lmpipe.backends import warm
from lmpipe.bin.bench import main
from lmpipe.engine.decoding import Decoding
from lmpipe.models.loading import ModelSettings
from lmpipe.tasks import bench_cold
from lmpipe.tasks.bench_cold import ColdCommand, cold_commands, cold_records

BASE = ['python -c "import click"', 'python -c "import tokenizers"', "echo hi | lm-tokenize",
        "echo hi | lm-generate -n 1 --no-server"]


def test_the_commands_side_by_side(tmp_path, monkeypatch, tiny_llama):
    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path))
    commands = cold_commands(None, None)
    assert [c.shown for c in commands] == BASE
    assert commands[0].argv == (sys.executable, "-c", "import click") and commands[0].impl == "python"
    assert commands[2].argv[0].endswith("lm-tokenize") and commands[2].stdin == b"hi\n"
    assert commands[3].argv[1:] == ("-n", "1", "--no-server") and commands[3].impl == "lmpipe"

    # A server that is not the warm one this model finds is named with --server ...
    model = str(tiny_llama)
    url = "http://127.0.0.1:9"
    last = cold_commands(model, url)[-1]
    assert last.shown == f"echo hi | lm-generate -n 1 --server {url} -m {model}"
    assert last.argv[1:] == ("-n", "1", "--server", url, "-m", model)
    # ... and one recorded in lmpipe's home for it, listening, is found with no flags at all.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = ModelSettings(model)
        entry = warm.register(url, warm.holds(settings.ref().id, settings, Decoding()), warm.new_token())
        try:
            last = cold_commands(model, url + "/v1")[-1]
        finally:
            warm.unregister(entry)
    assert last.shown == f"echo hi | lm-generate -n 1 -m {model}" and "--server" not in last.argv


def test_records_interleave_the_commands_and_compare_with_import_tokenizers():
    commands = [ColdCommand(shown, ("true",), impl="python" if shown.startswith("python") else "lmpipe")
                for shown in BASE]
    seconds = {BASE[0]: [9, 0.05, 0.07], BASE[1]: [9, 0.02, 0.04], BASE[2]: [9, 0.09, 0.11], BASE[3]: [9, 2.0, 3.0]}
    ran: list[str] = []

    def fake(command: ColdCommand) -> tuple[float, bool]:
        ran.append(command.shown)
        return seconds[command.shown][ran.count(command.shown) - 1], command.shown != BASE[3] or len(ran) < 8

    records = cold_records(commands, 2, run=fake)
    assert ran == BASE * 3  # one untimed round, then every command once per round
    assert records[:4] == [
        {"impl": "python", "case": "cold", "command": BASE[0], "seconds": {"min": 0.05, "median": 0.06},
         "repetitions": 2, "ok": True},
        {"impl": "python", "case": "cold", "command": BASE[1], "seconds": {"min": 0.02, "median": 0.03},
         "repetitions": 2, "ok": True},
        {"impl": "lmpipe", "case": "cold", "command": BASE[2], "seconds": {"min": 0.09, "median": 0.1},
         "repetitions": 2, "ok": True},
        {"impl": "lmpipe", "case": "cold", "command": BASE[3], "seconds": {"min": 2.0, "median": 2.5},
         "repetitions": 2, "ok": False},  # one of its timed runs failed
    ]
    assert records[4] == {"impl": "ratio", "case": "cold-ratio", "over": BASE[1],
                          "medians": {BASE[2]: 3.33, BASE[3]: 83.33}}


def test_lm_bench_cold_writes_them(monkeypatch):
    monkeypatch.setattr(bench_cold, "run_once", lambda command: (0.5, True))
    result = CliRunner().invoke(main, ["--cold", "--skip-generate", "-r", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    records = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [r["command"] for r in records[:4]] == BASE and records[4]["case"] == "cold-ratio"
    assert result.stderr == "lm-bench: timing 4 cold processes side by side\n"
