"""Plain codes to each translation family's own codes; impossible pairs are clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lmpipe.errors import UsageError
from lmpipe.text.languages import family_code, family_of, resolve


def tokenizer_with(codes, **attrs):
    return SimpleNamespace(all_special_tokens=["<s>", "</s>"], additional_special_tokens=list(codes),
                           get_added_vocab=dict, **attrs)


def test_mbart50_codes_from_the_real_tokenizer(tiny_mbart):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mbart)
    assert family_of("mbart", True, tok) == "mbart"
    lang = resolve("mbart", tok, "x", "en", "es")
    assert (lang.source_code, lang.target_code, lang.target_token) == ("en_XX", "es_XX", "es_XX")
    assert resolve("mbart", tok, "x", "de", "fr").target_code == "fr_XX"
    assert resolve("mbart", tok, "x", "en_XX", "zh_CN").target_code == "zh_CN"  # the family's own code as it is
    with pytest.raises(UsageError, match="no language 'tlh'"):
        resolve("mbart", tok, "x", "en", "tlh")
    with pytest.raises(UsageError, match="same language"):
        resolve("mbart", tok, "x", "en", "en")


def test_nllb_codes():
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    tok = tokenizer_with(FAIRSEQ_LANGUAGE_CODES)
    assert family_of("m2m_100", True, tok) == "nllb"
    lang = resolve("nllb", tok, "facebook/nllb-200-distilled-600M", "en", "es")
    assert (lang.source_code, lang.target_code, lang.target_token) == ("eng_Latn", "spa_Latn", "spa_Latn")
    assert resolve("nllb", tok, "x", "en", "zh").target_code == "zho_Hans"
    assert resolve("nllb", tok, "x", "en", "ar").target_code == "arb_Arab"
    with pytest.raises(UsageError, match="no language 'xx'"):
        resolve("nllb", tok, "x", "en", "xx")


def test_m2m100_codes():
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    tok = tokenizer_with([f"__{c}__" for c in FAIRSEQ_LANGUAGE_CODES["m2m100"]])
    assert family_of("m2m_100", True, tok) == "m2m100"
    lang = resolve("m2m100", tok, "facebook/m2m100_418M", "en", "es")
    assert (lang.source_code, lang.target_code, lang.target_token) == ("en", "es", "__es__")
    with pytest.raises(UsageError, match="no language 'eng_Latn'"):
        resolve("m2m100", tok, "x", "en", "eng_Latn")


def test_marian_one_pair_and_many_targets(tiny_marian, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_marian)
    assert family_of("marian", True, tok) == "marian"
    lang = resolve("marian", tok, "x", "en", "es")
    assert (lang.source_code, lang.target_code, lang.prefix) == ("en", "es", "")
    assert resolve("marian", tok, "x", None, None).target == "es"  # the pair it knows
    with pytest.raises(UsageError, match="translates from 'en', not 'fr'"):
        resolve("marian", tok, "x", "fr", "es")
    # an opus-mt name says the pair when the tokenizer does not
    bare = SimpleNamespace(source_lang=None, target_lang=None, supported_language_codes=[])
    assert resolve("marian", bare, "Helsinki-NLP/opus-mt-en-de", "en", "de").target_code == "de"
    with pytest.raises(UsageError, match="cannot translate into 'es'"):
        resolve("marian", bare, "Helsinki-NLP/opus-mt-en-de", "en", "es")
    tatoeba = SimpleNamespace(source_lang="eng", target_lang="deu", supported_language_codes=[])
    assert resolve("marian", tatoeba, "x", "en", "de").target_code == "de"
    with pytest.raises(UsageError, match="cannot translate into 'fr'"):
        resolve("marian", tatoeba, "x", "en", "fr")
    # multi-target models put the target token before the text
    multi = SimpleNamespace(source_lang=None, target_lang=None, supported_language_codes=[">>es<<", ">>por<<"])
    assert resolve("marian", multi, "opus-mt-en-ROMANCE", "en", "es").prefix == ">>es<< "
    assert resolve("marian", multi, "opus-mt-en-ROMANCE", "en", "pt").prefix == ">>por<< "
    with pytest.raises(UsageError, match="cannot translate into 'de'"):
        resolve("marian", multi, "opus-mt-en-ROMANCE", "en", "de")


def test_t5_prefix_and_chat():
    lang = resolve("t5", None, "t5-small", "en", "de", {"translation_en_to_de": "translate English to German: "})
    assert lang.prefix == "translate English to German: "
    assert resolve("t5", None, "x", "en", "es").prefix == "translate English to Spanish: "
    assert resolve("chat", None, "x", None, "es").target == "es"
    with pytest.raises(UsageError, match="--to is needed"):
        resolve("chat", None, "x", "en", None)


def test_family_code_prefers_the_main_script():
    assert family_code("nllb", "zh", ["zho_Hant", "zho_Hans"]) == "zho_Hans"
