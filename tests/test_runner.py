import pytest

from lmpipe.records.jsonl import Item
from lmpipe.records.runner import INTERRUPTED, Finished, Streamed, run


class ListSink:
    def __init__(self):
        self.records, self.events = [], []

    def finished(self, record, failed):
        self.records.append((record, failed))

    def streamed(self, item, event):
        self.events.append((item.line, event))


def items(n, bad=()):
    return [Item(i, None, "bad line") if i in bad else Item(i, {"text": str(i)}) for i in range(1, n + 1)]


def test_records_come_out_in_input_order_whatever_order_they_finish():
    def process(batch):
        for item in reversed(batch):
            yield Streamed(item, "tick")
            yield Finished(item, {**item.record, "done": True})

    sink = ListSink()
    summary = run(items(7, bad={3}), process, sink, batch_size=3)
    lines = [r.get("line") or int(r["text"]) for r, _ in sink.records]
    assert lines == [1, 2, 3, 4, 5, 6, 7]
    assert sink.records[2] == ({"error": "bad line", "line": 3}, True)
    assert (summary.read, summary.written, summary.failed) == (7, 7, 1)
    assert len(sink.events) == 6


def test_ctrl_c_keeps_what_was_read_and_marks_the_unfinished():
    def process(batch):
        yield Finished(batch[0], dict(batch[0].record))
        raise KeyboardInterrupt

    sink = ListSink()
    with pytest.raises(KeyboardInterrupt) as info:
        run(items(5), process, sink, batch_size=3)
    assert [r for r, _ in sink.records] == [
        {"text": "1"},
        {"text": "2", "error": INTERRUPTED, "line": 2},
        {"text": "3", "error": INTERRUPTED, "line": 3},
    ]
    assert info.value.summary.interrupted


def test_ctrl_c_while_a_record_is_written_does_not_write_it_twice():
    class InterruptedSink(ListSink):
        def finished(self, record, failed):
            super().finished(record, failed)
            if len(self.records) == 1:
                raise KeyboardInterrupt  # lands after the write, before the runner moves on

    def process(batch):
        for item in batch:
            yield Finished(item, dict(item.record))

    sink = InterruptedSink()
    with pytest.raises(KeyboardInterrupt):
        run(items(3), process, sink, batch_size=3)
    assert [r.get("text") for r, _ in sink.records] == ["1", "2", "3"]
    assert sink.records[0] == ({"text": "1"}, False)
