"""lm-summarize against transformers' own generate (BART, T5), map-reduce, and the embedded chat model."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl
from seq2seq_reference import reference, unbatched
from tiny_seq2seq import TEXTS

from lmpipe.bin.summarize import main

DOCS = [TEXTS[0], TEXTS[2], TEXTS[4]]


def summarize(*args: str, texts=DOCS):
    lines = [orjson.dumps({"text": t, "id": f"doc{i}"}).decode() for i, t in enumerate(texts)]
    result = CliRunner().invoke(main, list(args), input="\n".join(lines) + "\n", catch_exceptions=False)
    return result, jsonl(result.stdout_bytes)


@pytest.mark.parametrize("batch", ["3", "1"])
def test_bart_is_transformers_generate(tiny_bart, batch):
    args = ["--max-length", "12", "--min-length", "3", "--num-beams", "2"]
    result, out = summarize("-m", str(tiny_bart), *args, "-b", batch)
    assert result.exit_code == 0, result.stderr
    expected = (reference if batch == "3" else unbatched)(tiny_bart, DOCS, max_length=12, min_length=3, num_beams=2)
    assert [r["summary"] for r in out] == expected and any(expected)
    assert [r["id"] for r in out] == ["doc0", "doc1", "doc2"]
    for r in out:
        assert r["chunks"] == 1 and r["rounds"] == 1
        assert r["manifest"]["generation"] == {"num_beams": 2, "max_length": 12, "min_length": 3}
        assert r["stats"]["output_tokens"] <= 11


def test_t5_summarizes_with_its_prefix(tiny_t5):
    result, out = summarize("-m", str(tiny_t5), "--max-length", "10")
    assert result.exit_code == 0, result.stderr
    expected = reference(tiny_t5, DOCS, prefix="summarize: ", max_length=10)
    assert [r["summary"] for r in out] == expected and any(expected)
    assert out[0]["manifest"]["prefix"] == "summarize: "


def test_min_length_over_max_length_is_a_usage_error(tiny_bart):
    result, out = summarize("-m", str(tiny_bart), "--max-length", "5", "--min-length", "9")
    assert result.exit_code == 2 and out == []
    assert "--min-length must be less than --max-length" in result.stderr


def test_long_text_is_summarized_map_reduce(tiny_bart):
    from lmpipe.backends.seq2seq import Seq2SeqSettings
    from lmpipe.models.loading import ModelSettings, load
    from lmpipe.records.jsonl import Item
    from lmpipe.tasks.summarize import SummarizeSettings, SummarizeTask

    lm = load(ModelSettings(str(tiny_bart), device="cpu"))
    text = " ".join(TEXTS * 2)
    assert len(lm.tokenizer(text)["input_ids"]) > 4 * 64
    calls: list[list[str]] = []
    generate = lm.model.generate

    def spy(**kwargs):
        calls.append(lm.tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True))
        return generate(**kwargs)

    lm.model.generate = spy
    task = SummarizeTask(lm, SummarizeSettings(generation=Seq2SeqSettings(max_length=8)), batch_size=32)
    [finished] = list(task.process([Item(1, {"text": text}), ]))
    record = finished.record
    assert "error" not in record, record.get("error")
    first_round = calls[0]
    assert record["chunks"] == len(first_round) >= 4
    assert "".join(first_round) == text  # every sentence of the text, in order, in the map round
    assert record["rounds"] == len(calls) >= 2
    assert len(calls[-1]) == 1  # the reduce ends with one summary of the summaries
    assert record["summary"] == reference(tiny_bart, calls[-1], max_length=8)[0]
    assert record["stats"]["input_tokens"] > 4 * 64


def test_chat_model_map_reduce_goes_through_generate_task(tiny_llama):
    text = " ".join(TEXTS * 2)
    result, out = summarize("-m", str(tiny_llama), "--window", "120", "--max-length", "6", texts=[text, "Short."])
    assert result.exit_code == 0, result.stderr
    long, short = out
    assert long["chunks"] >= 3 and long["rounds"] >= 2 and long["summary"]
    assert short["chunks"] == 1 and short["rounds"] == 1
    assert long["manifest"]["window"] == 120 and long["manifest"]["sampling"]["max_new_tokens"] == 6
    assert long["stats"]["output_tokens"] <= 6 * (long["chunks"] + long["rounds"] * 2)
    result, _ = summarize("-m", str(tiny_llama), "--window", "10", "--max-length", "6", texts=["x"])
    assert result.exit_code == 2 and "leaves no room for text after the instruction" in result.stderr
    result, _ = summarize("-m", str(tiny_llama), "--num-beams", "3", texts=["x"])
    assert result.exit_code == 2 and "--num-beams needs a seq2seq model" in result.stderr


def test_embedded_chat_model_summary_is_shorter(embedded):
    paragraph = (
        "The city council met on Tuesday evening to discuss the new public library. After two hours of debate, "
        "the members agreed to build it next to the central park, where the old bus station used to be. "
        "Construction will start in the spring and should take about eighteen months. The library will have "
        "a children's wing, a reading garden on the roof, and rooms that local groups can book for free. "
        "The mayor said the project shows that the town still invests in education and culture."
    )
    result, out = summarize("-m", "smollm2", "--max-length", "24", texts=[paragraph])
    assert result.exit_code == 0, result.stderr
    [record] = out
    assert record["summary"].strip()
    assert len(record["summary"]) < len(paragraph)
    assert record["manifest"]["instruction"].startswith("Summarize")
