import io

import orjson

from lmpipe.records.progress import Progress, ProgressSink, choose_mode, count_remaining_lines


def test_json_events_count_what_was_written():
    err = io.StringIO()
    progress = Progress("lm-x", "json", total=3, stream=err)

    class Null:
        def finished(self, record, failed): ...
        def streamed(self, item, event): ...

    sink = ProgressSink(Null(), progress)
    for failed in (False, True, False):
        sink.finished({}, failed)
    progress.close()
    events = [orjson.loads(line) for line in err.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["started", "progress", "progress", "progress", "finished"]
    assert events[0] == {"event": "started", "tool": "lm-x", "total": 3}
    assert (events[-1]["done"], events[-1]["failed"]) == (3, 1)
    assert events[-2]["eta_s"] == 0.0


def test_lines_left_in_a_regular_file_are_counted_without_moving(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"a\nb\nc")
    with path.open("rb") as f:
        f.readline()
        assert count_remaining_lines(f) == 2
        assert f.readline() == b"b\n"
    assert count_remaining_lines(io.BytesIO(b"x\n")) is None


def test_auto_mode_shows_a_bar_only_for_people():
    assert choose_mode("auto", stdout_tty=False, stderr_tty=True) == "bar"
    assert choose_mode("auto", stdout_tty=True, stderr_tty=True) == "none"
    assert choose_mode("auto", stdout_tty=False, stderr_tty=False) == "none"
    assert choose_mode("json", stdout_tty=True, stderr_tty=True) == "json"
