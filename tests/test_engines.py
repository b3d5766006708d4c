"""The engine layer: batching pieces, failures per call, and one `stats` for many pieces."""

from __future__ import annotations

import pytest

from lmpipe.backends.text import Output, check, combine, run_pieces
from lmpipe.errors import RecordError


def stats(inp, out, ttft, total, reason="eos"):
    return {"input_tokens": inp, "output_tokens": out, "ttft_s": ttft, "tokens_per_s": 0.0, "total_s": total,
            "finish_reason": reason}


class Fake:
    limit = 100

    def __init__(self, fail_on: str | None = None):
        self.fail_on, self.calls = fail_on, []

    def count(self, text):
        return len(text)

    def run(self, texts):
        self.calls.append(list(texts))
        if self.fail_on in texts:
            raise RuntimeError("out of memory")
        return [Output(t.upper(), stats(len(t), 2, 0.1, 0.5)) for t in texts]


def test_run_pieces_batches_in_order_and_fails_only_the_failed_call():
    engine = Fake(fail_on="d")
    out = run_pieces(engine, ["a", "b", "c", "d", "e"], batch_size=2)
    assert engine.calls == [["a", "b"], ["c", "d"], ["e"]]
    assert [o.text for o in out] == ["A", "B", "", "", "E"]
    assert [o.error for o in out][2:4] == ["generation failed: out of memory"] * 2
    assert out[0].call == out[1].call != out[2].call != out[4].call
    again = run_pieces(engine, ["x"], batch_size=2)
    assert again[0].call not in {o.call for o in out}  # a later round is another call
    with pytest.raises(RecordError, match="out of memory"):
        check(out[2:4])
    check(out[:2])


def test_combine_adds_tokens_and_time_per_call():
    one = [Output("a", stats(10, 5, 0.2, 1.0), call=1), Output("b", stats(12, 3, 0.2, 0.8), call=1),
           Output("c", stats(4, 9, 0.1, 2.0, "length"), call=2)]
    s = combine(one)
    assert (s["input_tokens"], s["output_tokens"]) == (26, 17)
    assert s["ttft_s"] == 0.2 and s["total_s"] == 3.0  # the slowest row of call 1, then call 2
    assert s["finish_reason"] == "length"
    assert s["tokens_per_s"] == round((4 + 2 + 8) / (0.8 + 0.6 + 1.9), 3)
    assert combine(one[:1]) == one[0].stats
