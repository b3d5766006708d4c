"""lm-tokenize: ids equal transformers' AutoTokenizer, round trips, added tokens that persist."""

import orjson
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.bin.tokenize import main

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "Café, naïve, Straße, żółć",
    "東京は日本の首都です。北京欢迎你",
    "Emoji: 🙂👍🏽🚀",
    "def f(x):\n    return {'a': x ** 2}  # code",
]


def invoke(*args, input=b""):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def lines(texts):
    return "".join(orjson.dumps({"text": t}).decode() + "\n" for t in texts)


def test_ids_equal_autotokenizer_and_decode_round_trips(embedded):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded)
    result = invoke(input=lines(SAMPLES))
    assert result.exit_code == 0 and result.stderr == ""
    records = jsonl(result.stdout_bytes)
    for text, rec in zip(SAMPLES, records, strict=True):
        assert rec["ids"] == tok(text)["input_ids"]
        assert rec["count"] == len(rec["ids"]) == len(rec["tokens"]) == len(rec["offsets"])
        assert rec["tokens"] == tok.convert_ids_to_tokens(rec["ids"])
    ids = b"".join(orjson.dumps({"ids": r["ids"]}) + b"\n" for r in records)
    back = jsonl(invoke("--decode", input=ids).stdout_bytes)
    assert [r["text"] for r in back] == SAMPLES


def test_offsets_point_into_the_text(embedded):
    rec = jsonl(invoke(input=lines(["Hello, world"])).stdout_bytes)[0]
    assert [rec["text"][a:b] for a, b in rec["offsets"]] == ["Hello", ",", " world"]


def test_added_tokens_are_single_tokens_and_survive_save(tmp_path, embedded):
    saved = tmp_path / "tok"
    result = invoke("--add-token", "<tool>", "--add-special-token", "<|sep|>", "--save", str(saved),
                    input=lines(["a <tool> b <|sep|>"]))
    assert result.exit_code == 0, result.stderr
    first = jsonl(result.stdout_bytes)[0]
    again = jsonl(invoke("--tokenizer", str(saved), input=lines(["a <tool> b <|sep|>"])).stdout_bytes)[0]
    assert again["ids"] == first["ids"]
    assert "<tool>" in again["tokens"] and "<|sep|>" in again["tokens"]
    i, j = again["tokens"].index("<tool>"), again["tokens"].index("<|sep|>")
    assert again["added"][i] and not again["special"][i]
    assert again["special"][j] and not again["added"][j]
    assert again["ids"][i] == 49152  # the first id past SmolLM2's vocabulary


def test_decode_errors_and_missing_field_are_error_records(embedded):
    data = b'{"ids": [1, "x"]}\n{"ids": [99999999]}\n{"other": 1}\n'
    result = invoke("--decode", input=data)
    assert result.exit_code == 1
    errors = [r["error"] for r in jsonl(result.stdout_bytes)]
    assert "list of integers" in errors[0] and "token ids must be in" in errors[1]
    result = invoke(input=b'{"other": 1}\n')
    assert jsonl(result.stdout_bytes)[0]["error"].startswith("record has no 'text' field")


def test_missing_tokenizer_folder_fails_fast():
    result = invoke("--tokenizer", "/nonexistent/tok", input=b"hi\n")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "lm-tokenize: error: --tokenizer /nonexistent/tok: no such folder\n"


def test_tokenizer_only_never_loads_weights(embedded, monkeypatch):
    import transformers

    def refuse(*a, **k):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    assert invoke(input=b"hi\n").exit_code == 0
