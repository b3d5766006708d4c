"""lm-chunk: chunks reassemble into the original exactly; none is over --max-tokens."""

from __future__ import annotations

from itertools import pairwise

import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl, run_tool

from lmpipe.filters.chunk import main
from lmpipe.text.chunking import chunk, reassemble

TEXT = ("Pipes connect small tools; each tool does one job well.  The quick brown fox jumps over the lazy dog.\n\n"
        "Language models read tokens and write tokens. Ünïcödé, 日本語 and emoji 🎉 must survive!\t"
        "def add(a, b):\n    return a + b\n") * 3


def run_chunk(*args: str, lines: list[str]):
    result = CliRunner().invoke(main, list(args), input="\n".join(lines) + "\n", catch_exceptions=False)
    return result, jsonl(result.stdout_bytes)


@pytest.mark.parametrize("max_tokens,overlap", [(8, 0), (16, 4), (7, 6), (1000, 10)])
def test_chunks_reassemble_exactly_and_stay_under_the_limit(tiny_llama, max_tokens, overlap):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_llama / "tokenizer.json"))
    records = [{"id": "a", "text": TEXT, "keep": True}, {"text": "short"}]
    result, out = run_chunk("--tokenizer", str(tiny_llama), "-n", str(max_tokens), "--overlap", str(overlap),
                            lines=[orjson.dumps(r).decode() for r in records])
    assert result.exit_code == 0, result.stderr
    mine = [r for r in out if r["source"] == "a"]
    assert [r["chunk"] for r in mine] == list(range(len(mine))) and all(r["chunks"] == len(mine) for r in mine)
    assert reassemble([r["text"] for r in mine], [r["start"] for r in mine], [r["end"] for r in mine]) == TEXT
    for r in mine:
        assert TEXT[r["start"]:r["end"]] == r["text"] and r["keep"] is True
        assert r["tokens"] == len(tok.encode(r["text"], add_special_tokens=False).ids) <= max_tokens
    if max_tokens < 100:
        assert len(mine) > 3
        for before, after in pairwise(mine):  # overlapping (or touching) spans, moving forward
            assert before["start"] < after["start"] <= before["end"]
    assert out[-1]["source"] == 2 and out[-1]["text"] == "short" and out[-1]["chunks"] == 1


def test_chunking_with_a_word_counter():
    def words(text):
        import re

        return [m.span() for m in re.finditer(r"\S+", text)]

    text = "one two  three four five six seven"
    spans = chunk(text, words, 3, 1)
    pieces = [text[c.start:c.end] for c in spans]
    assert pieces == ["one two  three ", "three four five ", "five six seven"]
    assert reassemble(pieces, [c.start for c in spans], [c.end for c in spans]) == text


def test_embedded_model_tokenizer_and_errors(embedded):
    lines = ['{"text": "' + "word " * 50 + '"}', '{"body": 1}', '{"text": 5}']
    result, out = run_chunk("-n", "20", "--overlap", "5", lines=lines)
    assert result.exit_code == 1
    assert [r["chunks"] for r in out if "chunks" in r][0] >= 3
    assert out[-2]["error"].startswith("record has no 'text' field") and out[-1]["error"].startswith("field 'text'")


def test_bad_settings_are_usage_errors(tiny_llama):
    result = run_tool("lm-chunk", "--tokenizer", str(tiny_llama), "-n", "4", "--overlap", "4", input=b"x\n")
    assert result.returncode == 2 and b"--overlap must be at least 0 and less than --max-tokens" in result.stderr
    result = run_tool("lm-chunk", "--tokenizer", "/nonexistent", input=b"x\n")
    assert result.returncode == 2 and b"no tokenizer.json" in result.stderr


def test_only_the_tokenizers_library_is_loaded(tiny_llama):
    code = ("import sys; from lmpipe.tasks.chunk import offsets_encoder; "
            f"print(len(offsets_encoder(None, {str(tiny_llama)!r})('Hello world')), "
            "sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    probe = run_tool("python", "-c", code)
    count, loaded = probe.stdout.decode().split(" ", 1)
    assert int(count) > 0 and loaded.strip() == "[]", probe.stderr
