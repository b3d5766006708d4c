"""--output FILE --resume: durable appends, repair of a torn last line, and SIGKILL at any point."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import orjson
import pytest
from conftest import BIN, jsonl, run_tool

from lmpipe.errors import UsageError
from lmpipe.records.jsonl import Item
from lmpipe.records.resume import KEY_FIELD, FileSink, done_keys, item_key, prepare_output, repair
from lmpipe.records.runner import INTERRUPTED


def test_repair_cuts_only_a_partial_last_line(tmp_path):
    f = tmp_path / "out.jsonl"
    f.write_bytes(b'{"id": 1}\n{"id": 2}\n{"id": 3, "gen')
    assert repair(f) == len(b'{"id": 3, "gen')
    assert f.read_bytes() == b'{"id": 1}\n{"id": 2}\n'
    assert repair(f) == 0
    g = tmp_path / "torn-first.jsonl"
    g.write_bytes(b'{"id": 1, "gen')
    repair(g)
    assert g.read_bytes() == b""


def test_keys_by_id_else_by_input_hash_and_duplicates_count(tmp_path):
    a, b = Item(1, {"id": 7, "text": "x"}), Item(2, {"text": "y"})
    assert item_key(a) == "id:7"
    # Key order does not change the hash: it is of canonical JSON.
    assert item_key(Item(3, {"text": "y", "n": 1})) == item_key(Item(4, {"n": 1, "text": "y"}))
    path, state = prepare_output(str(tmp_path / "out.jsonl"), resume=True)
    items = [a, b, b]
    sink = FileSink(path, state)
    for item in state.select(items):
        sink.finished({**item.record, "generated": "z"}, False)
    sink.close()
    written = jsonl(path.read_bytes())
    assert [r.get("id") for r in written] == [7, None, None]
    assert written[1][KEY_FIELD] == item_key(b).removeprefix("sha256:")
    assert done_keys(path) == Counter({"id:7": 1, item_key(b): 2})
    # A rerun over the same input plus a third copy of b: only that copy is left to do.
    _, state = prepare_output(str(path), resume=True)
    assert [i.line for i in state.select([a, b, Item(5, {"text": "y"}), Item(6, {"text": "y"})])] == [6]
    assert state.skipped == 3


def test_interrupted_records_are_not_written(tmp_path):
    path, state = prepare_output(str(tmp_path / "out.jsonl"), resume=False)
    items = list(state.select([Item(1, {"id": 1}), Item(2, {"id": 2})]))
    sink = FileSink(path, state)
    sink.finished({"id": 1, "generated": "a"}, False)
    sink.finished({"id": 2, "error": INTERRUPTED, "line": 2}, True)
    sink.close()
    assert len(items) == 2 and jsonl(path.read_bytes()) == [{"id": 1, "generated": "a"}]


def test_existing_output_without_resume_is_an_error(tmp_path):
    f = tmp_path / "out.jsonl"
    f.write_bytes(b'{"id": 1}\n')
    with pytest.raises(UsageError, match="--resume"):
        prepare_output(str(f), resume=False)
    f.write_bytes(b'{"id": 1}\nnot json\n')
    with pytest.raises(UsageError, match="line 2"):
        prepare_output(str(f), resume=True)


def test_a_second_writer_is_refused(tmp_path):
    path, state = prepare_output(str(tmp_path / "out.jsonl"), resume=True)
    first = FileSink(path, state)
    try:
        with pytest.raises(UsageError, match="another run"):
            FileSink(path, state)
    finally:
        first.close()


def test_a_second_resume_on_a_running_job_stops_and_cuts_nothing(tmp_path):
    """The running job's last line is half written: a --resume started by mistake must not repair it."""
    import fcntl
    import os

    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"text": "a", "generated": "x"}\n{"text": "b", "gener')
    fd = os.open(out, os.O_WRONLY | os.O_APPEND)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the running job's lock, as its FileSink holds it
    try:
        r = run_tool("lm-template", "{{ text }}!", "--output", str(out), "--resume", input='{"text": "c"}\n')
        assert r.returncode == 2
        assert r.stderr.decode() == f"lm-template: error: --output {out} is being written by another run\n"
        assert out.read_bytes() == b'{"text": "a", "generated": "x"}\n{"text": "b", "gener'
    finally:
        os.close(fd)


def test_cli_refuses_to_overwrite_before_loading(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_bytes(b'{"id": 1}\n')
    r = run_tool("lm-generate", "--model", str(tmp_path / "no-such-model"), "--output", str(out), input="hi\n")
    assert r.returncode == 2
    assert r.stderr.decode().strip() == (f"lm-generate: error: --output {out} exists; add --resume to continue it, "
                                         "or remove it")
    assert out.read_bytes() == b'{"id": 1}\n'
    r = run_tool("lm-generate", "--resume", input="hi\n")
    assert r.returncode == 2 and "--resume needs --output" in r.stderr.decode()


def _lines(path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_sigkill_at_several_points_then_resume_gives_every_record_once(tiny_llama, tmp_path):
    # Records with ids, records without (keyed by hash), and two identical ones.
    records = [{"id": f"r{i}", "text": f"Pipes and tools number {i}"} for i in range(14)]
    records += [{"text": "The quick brown fox"}, {"text": "The quick brown fox"}, {"text": "no id here"}]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    out = tmp_path / "out.jsonl"
    args = [str(BIN / "lm-generate"), "--model", str(tiny_llama), "--output", str(out), "--resume",
            "-n", "24", "-b", "1", "--progress", "none"]
    kills = 0
    for target in (1, 5, 10):  # kill once the file holds this many records
        with open(source, "rb") as stdin:
            proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while _lines(out) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.communicate()
        # Whatever the kill left, every complete line is a record; a torn tail is only ever the last line.
        data = out.read_bytes()
        for line in data.split(b"\n")[:-1]:
            orjson.loads(line)
    assert kills >= 2, "the runs finished before they could be killed"
    # A torn write, as a kill in the middle of a write would leave it.
    with open(out, "ab") as f:
        f.write(b'{"id": "r13", "generated": "half a reco')
    # The rest runs in-process (CliRunner): the same command, without another interpreter start.
    final = _generate(args[1:], source.read_bytes())
    assert final.exit_code == 0, final.stderr
    data = out.read_bytes()
    assert data.endswith(b"\n")
    written = jsonl(data)
    assert all("generated" in r and "stats" in r for r in written)
    ids = Counter(r.get("id") for r in written if "id" in r)
    assert ids == Counter({f"r{i}": 1 for i in range(14)})
    texts = Counter(r["text"] for r in written if "id" not in r)
    assert texts == Counter({"The quick brown fox": 2, "no id here": 1})
    # Resumed output is what one uninterrupted run gives (greedy, batch size 1).
    full = _generate(["--model", str(tiny_llama), "-n", "24", "-b", "1"], source.read_bytes())
    expected = {orjson.dumps({k: r[k] for k in ("id", "text") if k in r}): r["generated"]
                for r in jsonl(full.stdout_bytes)}
    got = {orjson.dumps({k: r[k] for k in ("id", "text") if k in r}): r["generated"] for r in written}
    assert got == expected
    # A rerun finds nothing left to do and writes nothing.
    again = _generate(args[1:], source.read_bytes())
    assert again.exit_code == 0 and "nothing left to do" in again.stderr
    assert out.read_bytes() == data


def _generate(args: list[str], data: bytes):
    from click.testing import CliRunner

    from lmpipe.bin.generate import main

    return CliRunner().invoke(main, args, input=data, catch_exceptions=False)
