import pytest

from lmpipe.chat.reasoning import split_reasoning
from lmpipe.engine.stops import find_stop, safe_length


def test_find_stop_finds_the_earliest():
    assert find_stop("abc END xyz STOP", ("STOP", "END")) == 4
    assert find_stop("nothing here", ("STOP",)) == -1


@pytest.mark.parametrize("text, stops, shown", [
    ("Hello wor", ("world!",), 6),  # "wor" may become "world!"
    ("Hello", ("###",), 5),
    ("Hello #", ("###",), 6),
    ("abc\ufffd", (), 3),  # half a multi-byte character waits
])
def test_safe_length_holds_back_what_may_become_a_stop(text, stops, shown):
    assert safe_length(text, stops) == shown


@pytest.mark.parametrize("text, reasoning, answer", [
    ("<think>plan it</think>The answer.", "plan it", "The answer."),
    ("plan it</think>\nThe answer.", "plan it", "The answer."),
    ("Just an answer.", None, "Just an answer."),
    ("<think>still thinking", "still thinking", ""),
])
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)
