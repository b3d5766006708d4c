"""lm-translate against transformers' own generate, on tiny Marian, mBART-50 and T5 models."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl, run_tool
from seq2seq_reference import reference, unbatched
from tiny_seq2seq import TEXTS

from lmpipe.bin.translate import main

SHORT = ["The river runs through the old town.", "Rain is expected tomorrow.", "Hola mundo. Bonjour le monde."]


def translate(*args: str, texts=SHORT, records=None):
    lines = records if records is not None else [orjson.dumps({"text": t, "n": i}).decode()
                                                 for i, t in enumerate(texts)]
    result = CliRunner().invoke(main, list(args), input="\n".join(lines) + "\n", catch_exceptions=False)
    return result, jsonl(result.stdout_bytes)


def texts_of(out, field="translation"):
    return [r[field] for r in out]


@pytest.mark.parametrize("batch", ["3", "1"])
def test_marian_is_transformers_generate(tiny_marian, batch):
    result, out = translate("-m", str(tiny_marian), "--from", "en", "--to", "es", "--max-length", "12", "-b", batch)
    assert result.exit_code == 0, result.stderr
    expected = (reference if batch == "3" else unbatched)(tiny_marian, SHORT, max_length=12)
    assert texts_of(out) == expected
    assert any(expected), "the tiny model says nothing: the comparison would prove nothing"
    assert [r["n"] for r in out] == [0, 1, 2]  # input order, fields passed through
    for r in out:
        assert set(r["stats"]) == {"input_tokens", "output_tokens", "ttft_s", "tokens_per_s", "total_s",
                                   "finish_reason"}
        assert r["chunks"] == 1
        assert r["manifest"]["codes"] == {"from": "en", "to": "es"}
        assert r["manifest"]["generation"] == {"num_beams": 1, "max_length": 12, "min_length": 0}


@pytest.mark.parametrize("batch", ["3", "1"])
def test_mbart50_is_transformers_generate_with_language_codes(tiny_mbart, batch):
    result, out = translate("-m", str(tiny_mbart), "--from", "en", "--to", "es", "--max-length", "12", "-b", batch)
    assert result.exit_code == 0, result.stderr
    kwargs = dict(src_lang="en_XX", forced="es_XX", max_length=12)
    expected = (reference if batch == "3" else unbatched)(tiny_mbart, SHORT, **kwargs)
    assert texts_of(out) == expected and any(expected)
    # the codes matter: another target gives another output
    assert reference(tiny_mbart, SHORT, src_lang="en_XX", forced="de_DE", max_length=12) != expected
    assert out[0]["manifest"]["codes"] == {"from": "en_XX", "to": "es_XX"}


@pytest.mark.parametrize("family,source,target,other", [("nllb", "eng_Latn", "spa_Latn", "fra_Latn"),
                                                        ("m2m100", "en", "__es__", "__de__")])
def test_nllb_and_m2m100_are_transformers_generate_with_their_codes(request, family, source, target, other):
    folder = request.getfixturevalue(f"tiny_{family}")
    result, out = translate("-m", str(folder), "--from", "en", "--to", "es", "--max-length", "12", "-b", "3")
    assert result.exit_code == 0, result.stderr
    expected = reference(folder, SHORT, src_lang=source, forced=target, max_length=12)
    assert texts_of(out) == expected and any(expected)
    assert reference(folder, SHORT, src_lang=source, forced=other, max_length=12) != expected
    assert out[0]["manifest"]["family"] == family
    assert out[0]["manifest"]["codes"] == {"from": source, "to": target.strip("_")}


def test_t5_translates_with_its_task_prefix_and_beams(tiny_t5):
    result, out = translate("-m", str(tiny_t5), "--from", "en", "--to", "de", "--max-length", "10", "--num-beams", "2")
    assert result.exit_code == 0, result.stderr
    expected = reference(tiny_t5, SHORT, prefix="translate English to German: ", max_length=10, num_beams=2)
    assert texts_of(out) == expected and any(expected)
    assert out[0]["stats"]["ttft_s"] == out[0]["stats"]["total_s"]  # beam search: every token comes at the end


def test_impossible_pair_is_a_clear_usage_error(tiny_marian, tiny_mbart):
    result, out = translate("-m", str(tiny_marian), "--from", "en", "--to", "de")
    assert result.exit_code == 2 and out == []
    assert "translates en->es; it cannot translate into 'de'" in result.stderr
    result, _ = translate("-m", str(tiny_mbart), "--from", "en", "--to", "tlh")
    assert result.exit_code == 2 and "no language 'tlh'" in result.stderr
    result, _ = translate("-m", str(tiny_mbart), "--to", "es")
    assert result.exit_code == 2 and "--from and --to are needed" in result.stderr


def test_bad_records_become_error_records_in_order(tiny_marian):
    records = ['{"text": "Rain is expected tomorrow."}', '{"body": "no text"}', "{broken", "Hola mundo."]
    result, out = translate("-m", str(tiny_marian), "--max-length", "8", records=records)
    assert result.exit_code == 1
    assert [("error" in r) for r in out] == [False, True, True, False]
    assert out[1]["line"] == 2 and "no 'text' field" in out[1]["error"] and out[1]["body"] == "no text"
    assert out[3]["text"] == "Hola mundo."  # a plain line is {"text": line}


def long_text(window_multiple: int = 4) -> str:
    sentences = [f"{s}" for s in TEXTS] * window_multiple
    return " ".join(sentences)


def test_long_text_is_translated_whole_in_order(tiny_marian):
    from lmpipe.backends.seq2seq import Seq2SeqSettings
    from lmpipe.models.loading import ModelSettings, load
    from lmpipe.records.jsonl import Item
    from lmpipe.tasks.translate import TranslateSettings, TranslateTask

    lm = load(ModelSettings(str(tiny_marian), device="cpu"))
    text = long_text()
    assert len(lm.tokenizer(text)["input_ids"]) > 4 * 64  # four windows and more
    seen: list[str] = []
    generate = lm.model.generate

    def spy(**kwargs):
        seen.extend(lm.tokenizer.batch_decode(kwargs["input_ids"], skip_special_tokens=True))
        return generate(**kwargs)

    lm.model.generate = spy
    task = TranslateTask(lm, TranslateSettings("en", "es", generation=Seq2SeqSettings(max_length=8)), batch_size=3)
    [finished] = list(task.process([Item(1, {"text": text})]))
    record = finished.record
    assert record["chunks"] == len(seen) >= 4
    assert " ".join(seen).split() == text.split()  # every sentence reached the model, in order, nothing cut
    assert all(len(lm.tokenizer(s)["input_ids"]) <= 64 for s in seen)
    pieces = [reference(tiny_marian, [s], max_length=8)[0].strip() for s in seen]
    assert record["translation"].split() == " ".join(pieces).split()
    assert record["stats"]["input_tokens"] == sum(len(lm.tokenizer(s)["input_ids"]) for s in seen)


def test_embedded_chat_model_translates_by_instruction(embedded):
    result, out = translate("-m", "smollm2", "--to", "es", "--max-length", "16",
                            texts=["Good morning, my friend. How are you today?"])
    assert result.exit_code == 0, result.stderr
    [record] = out
    assert record["translation"].strip() and record["translation"] != record["text"]
    assert record["manifest"]["family"] == "chat" and "to Spanish" in record["manifest"]["instruction"]
    assert 0 < record["stats"]["output_tokens"] <= 16


def test_help_is_instant_and_torch_free():
    result = run_tool("lm-translate", "--help")
    assert result.returncode == 0 and b"--from" in result.stdout
    probe = run_tool("python", "-c", "import sys, lmpipe.bin.translate, lmpipe.bin.summarize; "
                     "print('torch' in sys.modules or 'transformers' in sys.modules)")
    assert probe.stdout.strip() == b"False"
