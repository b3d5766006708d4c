import io

import orjson
import pytest

from lmpipe.records.jsonl import Item, RecordWriter, error_record, parse_line, read_items


@pytest.mark.parametrize("raw, record", [
    (b'{"text": "hi", "id": 3}\n', {"text": "hi", "id": 3}),
    (b"plain words\n", {"text": "plain words"}),
    (b"42\n", {"text": "42"}),
    (b'[1, 2]\n', {"text": "[1, 2]"}),
    (b'"quoted"\r\n', {"text": '"quoted"'}),
    ("héllo 你好 🙂\n".encode(), {"text": "héllo 你好 🙂"}),
])
def test_lines_become_records(raw, record):
    assert parse_line(raw, 1) == Item(1, record)


def test_blank_lines_are_skipped_but_counted():
    items = list(read_items(io.BytesIO(b"a\n\n  \nb\n")))
    assert [(i.line, i.record) for i in items] == [(1, {"text": "a"}), (4, {"text": "b"})]


def test_broken_json_is_an_error_item_with_its_line():
    item = parse_line(b'{"text": "unterminated\n', 7)
    assert item.record is None and item.line == 7 and item.error.startswith("invalid JSON")


def test_invalid_utf8_is_an_error_item():
    for raw in (b"caf\xe9\n", b'{"text": "caf\xe9"}\n'):
        item = parse_line(raw, 2)
        assert not item.ok and ("UTF-8" in item.error or "utf-8" in item.error.lower())


def test_a_line_over_the_limit_is_an_error_and_the_stream_goes_on():
    data = b"short\n" + b"x" * 5000 + b"\nafter\n"
    items = list(read_items(io.BytesIO(data), max_line_bytes=1000))
    assert [i.line for i in items] == [1, 2, 3]
    assert items[1].error == "line longer than 1000 bytes"
    assert items[2].record == {"text": "after"}


def test_a_last_line_without_newline_is_read():
    assert [i.record for i in read_items(io.BytesIO(b"a\nb"))] == [{"text": "a"}, {"text": "b"}]


def test_error_record_passes_the_input_through():
    item = Item(5, {"text": "x", "id": "a"})
    assert error_record(item, "boom") == {"text": "x", "id": "a", "error": "boom", "line": 5}
    assert error_record(Item(6, None, "bad"), "bad") == {"error": "bad", "line": 6}


def test_writer_round_trips_and_counts_failures():
    out = io.BytesIO()
    w = RecordWriter(out)
    records = [{"text": "ü", "n": 1.5, "nested": {"a": [1, None]}}, {"error": "x", "line": 2}]
    w.write(records[0])
    w.write(records[1], failed=True)
    assert [orjson.loads(line) for line in out.getvalue().splitlines()] == records
    assert (w.written, w.failed) == (2, 1)
