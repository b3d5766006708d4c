"""The Python API (lmpipe.load): the generation loop's own events, the tools' own answers, a cheap import."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import jsonl, run_tool

import lmpipe
from lmpipe.errors import UsageError

PAGE = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def model(tiny_llama):
    return lmpipe.load(str(tiny_llama))


def test_generate_yields_tokens_then_one_completion(model):
    events = list(model.generate("The quick brown fox", max_new_tokens=6, raw=True))
    tokens, last = events[:-1], events[-1]
    assert all(isinstance(e, lmpipe.Token) for e in tokens) and isinstance(last, lmpipe.Completion)
    assert len(tokens) == last.output_tokens == 6 and last.finish_reason == "length"
    assert "".join(t.text for t in tokens) == last.text


def test_complete_answers_as_lm_generate_does(model, tiny_llama):
    """Greedy, the same prompt gives lm-generate's text, and stats with the same fields."""
    tool = run_tool("lm-generate", "--model", str(tiny_llama), "-n", "6", input="The quick brown fox\n")
    assert tool.returncode == 0, tool.stderr
    record = jsonl(tool.stdout)[0]
    result = model.complete("The quick brown fox", max_new_tokens=6)
    assert isinstance(result, lmpipe.Result)
    assert result.text == record["generated"] and result.finish_reason == record["stats"]["finish_reason"]
    assert set(result.stats) == set(record["stats"])
    chat = model.complete([{"role": "user", "content": "The quick brown fox"}], max_new_tokens=6)
    assert chat.text == result.text  # a text is one user turn of the chat template


def test_settings_check_themselves(model):
    with pytest.raises(UsageError):
        model.complete("hi", temperature=-1.0)


def test_import_is_cheap():
    probe = run_tool("python", "-c", "import sys, lmpipe; lmpipe.Token; "
                     "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    assert probe.returncode == 0, probe.stderr


def test_the_documented_example_runs(embedded, capsys):
    """The Python example of the docs' Python API page, as written, on the embedded model."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(PAGE), "exec"), {"__name__": "docs"})
    out = capsys.readouterr().out
    assert re.search(r"\(\d+ tokens, (eos|stop|length)\)", out) and out.strip()
