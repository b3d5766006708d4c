"""Seq2SeqGenerator: generate's own output, with lmpipe's timing and finish reasons."""

from __future__ import annotations

import pytest
from seq2seq_reference import _load

from lmpipe.backends.seq2seq import Seq2SeqGenerator, Seq2SeqSettings, window
from lmpipe.errors import UsageError


def engine(folder, **settings):
    tokenizer, model = _load(str(folder))
    return Seq2SeqGenerator(model, tokenizer, "cpu", Seq2SeqSettings(**settings)), tokenizer, model


def test_completions_are_generates_tokens(tiny_bart):
    eng, tokenizer, model = engine(tiny_bart, max_length=10)
    texts = ["Rain is expected tomorrow.", "Hola mundo."]
    completions = eng.run(texts)
    reference = model.generate(**tokenizer(texts, return_tensors="pt", padding=True), max_length=10).tolist()
    for c, row in zip(completions, reference, strict=True):
        generated = row[1:]
        eos = generated.index(2) if 2 in generated else None
        assert list(c.ids) == generated[:eos]
        assert c.finish_reason == ("eos" if eos is not None else "length")
        assert c.output_tokens == len(c.ids) and c.input_tokens == len(tokenizer(texts[c.row])["input_ids"])
        assert 0 < c.ttft_s <= c.total_s and len(c.token_seconds) == len(c.ids) + (eos is not None)
        assert c.text == tokenizer.decode(row, skip_special_tokens=True)


def test_window_and_the_default_length(tiny_bart, tiny_t5):
    eng, tokenizer, model = engine(tiny_bart)
    assert window(model, tokenizer) == 64 == eng.window
    assert model.generation_config.max_length is None
    assert eng.effective()["max_length"] == 64  # not transformers' 20 new tokens
    t5, _, _ = engine(tiny_t5)
    assert t5.window == 64  # no positions in T5's config: the tokenizer's model_max_length


@pytest.mark.parametrize("kwargs,message", [
    ({"num_beams": 0}, "--num-beams"), ({"max_length": 1}, "--max-length"),
    ({"min_length": 8, "max_length": 8}, "--min-length must be less"),
])
def test_settings_validate_themselves(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Seq2SeqSettings(**kwargs)
