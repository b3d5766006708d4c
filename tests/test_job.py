"""The job options together (lmpipe.records.job via lmpipe.records.pipe.run_records): progress events that match
what was written, with --output, --resume and --shard."""

from __future__ import annotations

import json

import orjson
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.bin.tokenize import main as tokenize_main


def events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines()]  # every stderr line is one event


def tokenize(model, *args: str, input: str):
    return CliRunner().invoke(tokenize_main, ["--model", str(model), "--progress", "json", *args], input=input,
                              catch_exceptions=False)


def test_progress_events_count_what_is_written(tiny_llama, tmp_path):
    data = "".join(json.dumps({"id": i, "text": f"tools {i}"}) + "\n" for i in range(7)) + "{bad\n"
    result = tokenize(tiny_llama, input=data)
    assert result.exit_code == 1  # the bad line fails
    out, ev = jsonl(result.stdout_bytes), events(result.stderr.split("lm-tokenize: 1 of")[0])
    assert ev[0] == {"event": "started", "tool": "lm-tokenize", "total": None}
    progress = [e for e in ev if e["event"] == "progress"]
    assert [e["done"] for e in progress] == list(range(1, len(out) + 1))
    assert progress[-1]["failed"] == sum("error" in r for r in out) == 1
    assert ev[-1]["event"] == "finished" and ev[-1]["done"] == len(out) == 8 and ev[-1]["failed"] == 1


def test_resume_reports_skipped_and_the_rest(tiny_llama, tmp_path):
    data = "".join(json.dumps({"id": i, "text": f"tools {i}"}) + "\n" for i in range(9))
    out = tmp_path / "out.jsonl"
    first = tokenize(tiny_llama, "--output", str(out), "--shard", "0/3", input=data)
    assert first.exit_code == 0 and first.stdout == ""
    assert [r["id"] for r in jsonl(out.read_bytes())] == [0, 3, 6]
    second = tokenize(tiny_llama, "--output", str(out), input=data)
    assert second.exit_code == 2 and "--resume" in second.stderr
    third = tokenize(tiny_llama, "--output", str(out), "--resume", input=data)
    ev = events(third.stderr)
    assert ev[0]["skipped"] == 3 and ev[-1]["done"] == 6
    assert sorted(r["id"] for r in jsonl(out.read_bytes())) == list(range(9))


class RecordListSink:
    def __init__(self):
        self.records = []

    def finished(self, record, failed):
        self.records.append(record)

    def streamed(self, item, event):
        pass


def test_total_counts_a_regular_file_and_its_shard(tiny_llama, tmp_path, capsys):
    from lmpipe.records.job import JobSettings
    from lmpipe.records.pipe import run_records
    from lmpipe.records.shard import Shard
    from lmpipe.tasks.tokenize import TokenizeSettings, TokenizeTask, load

    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(orjson.dumps({"text": f"t{i}"}) + b"\n" for i in range(10)))
    task, sink = TokenizeTask(load(str(tiny_llama), None), TokenizeSettings()), RecordListSink()
    job = JobSettings(shard=Shard(1, 4)).open()
    with open(source, "rb") as stdin:
        assert run_records("lm-tokenize", task.process, sink, 2, "json", stdin, job) == 0
    ev = events(capsys.readouterr().err)
    assert ev[0]["total"] == 3 and ev[-1]["done"] == 3 == len(sink.records)
    assert [r["text"] for r in sink.records] == ["t1", "t5", "t9"]
    assert ev[-2]["eta_s"] == 0.0


def test_generate_progress_matches_its_output_file(tiny_llama, tmp_path):
    from lmpipe.bin.generate import main as generate_main

    data = "".join(json.dumps({"id": i, "text": f"pipes {i}"}) + "\n" for i in range(5)) + "{bad\n"
    out = tmp_path / "gen.jsonl"
    result = CliRunner().invoke(generate_main, ["--model", str(tiny_llama), "-n", "4", "-b", "2", "--progress", "json",
                                                "--output", str(out)], input=data, catch_exceptions=False)
    assert result.exit_code == 1 and result.stdout == ""
    written = jsonl(out.read_bytes())
    ev = events(result.stderr.split("lm-generate: 1 of")[0])
    assert [e["event"] for e in ev] == ["started"] + ["progress"] * 6 + ["finished"]
    assert ev[-1]["done"] == len(written) == 6 and ev[-1]["failed"] == sum("error" in r for r in written) == 1
