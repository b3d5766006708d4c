"""Plain language codes (en, es, de, ...) mapped to each translation family's own codes.

Families: Marian (opus-mt: one pair, or `>>xx<<` target tokens), mBART-50 (`en_XX`), NLLB
(`eng_Latn`), M2M100 (`en`, as the token `__en__`), T5 (a task prefix naming the languages),
chat models (an instruction naming the languages), and any other seq2seq model (no codes).
A family's own code (`spa_Latn`, `es_XX`) is accepted as it is. Nothing here loads a model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError

# ISO 639-1 -> (English name, NLLB code). NLLB's codes are ISO 639-3 plus a script.
LANGUAGES: dict[str, tuple[str, str]] = {
    "af": ("Afrikaans", "afr_Latn"), "ar": ("Arabic", "arb_Arab"), "az": ("Azerbaijani", "azj_Latn"),
    "be": ("Belarusian", "bel_Cyrl"), "bg": ("Bulgarian", "bul_Cyrl"), "bn": ("Bengali", "ben_Beng"),
    "bs": ("Bosnian", "bos_Latn"), "ca": ("Catalan", "cat_Latn"), "cs": ("Czech", "ces_Latn"),
    "cy": ("Welsh", "cym_Latn"), "da": ("Danish", "dan_Latn"), "de": ("German", "deu_Latn"),
    "el": ("Greek", "ell_Grek"), "en": ("English", "eng_Latn"), "es": ("Spanish", "spa_Latn"),
    "et": ("Estonian", "est_Latn"), "eu": ("Basque", "eus_Latn"), "fa": ("Persian", "pes_Arab"),
    "fi": ("Finnish", "fin_Latn"), "fr": ("French", "fra_Latn"), "ga": ("Irish", "gle_Latn"),
    "gl": ("Galician", "glg_Latn"), "gu": ("Gujarati", "guj_Gujr"), "he": ("Hebrew", "heb_Hebr"),
    "hi": ("Hindi", "hin_Deva"), "hr": ("Croatian", "hrv_Latn"), "hu": ("Hungarian", "hun_Latn"),
    "hy": ("Armenian", "hye_Armn"), "id": ("Indonesian", "ind_Latn"), "is": ("Icelandic", "isl_Latn"),
    "it": ("Italian", "ita_Latn"), "ja": ("Japanese", "jpn_Jpan"), "ka": ("Georgian", "kat_Geor"),
    "kk": ("Kazakh", "kaz_Cyrl"), "km": ("Khmer", "khm_Khmr"), "ko": ("Korean", "kor_Hang"),
    "lt": ("Lithuanian", "lit_Latn"), "lv": ("Latvian", "lvs_Latn"), "mk": ("Macedonian", "mkd_Cyrl"),
    "ml": ("Malayalam", "mal_Mlym"), "mn": ("Mongolian", "khk_Cyrl"), "mr": ("Marathi", "mar_Deva"),
    "ms": ("Malay", "zsm_Latn"), "my": ("Burmese", "mya_Mymr"), "ne": ("Nepali", "npi_Deva"),
    "nl": ("Dutch", "nld_Latn"), "no": ("Norwegian", "nob_Latn"), "pl": ("Polish", "pol_Latn"),
    "ps": ("Pashto", "pbt_Arab"), "pt": ("Portuguese", "por_Latn"), "ro": ("Romanian", "ron_Latn"),
    "ru": ("Russian", "rus_Cyrl"), "si": ("Sinhala", "sin_Sinh"), "sk": ("Slovak", "slk_Latn"),
    "sl": ("Slovenian", "slv_Latn"), "sq": ("Albanian", "als_Latn"), "sr": ("Serbian", "srp_Cyrl"),
    "sv": ("Swedish", "swe_Latn"), "sw": ("Swahili", "swh_Latn"), "ta": ("Tamil", "tam_Taml"),
    "te": ("Telugu", "tel_Telu"), "th": ("Thai", "tha_Thai"), "tl": ("Tagalog", "tgl_Latn"),
    "tr": ("Turkish", "tur_Latn"), "uk": ("Ukrainian", "ukr_Cyrl"), "ur": ("Urdu", "urd_Arab"),
    "uz": ("Uzbek", "uzn_Latn"), "vi": ("Vietnamese", "vie_Latn"), "xh": ("Xhosa", "xho_Latn"),
    "zh": ("Chinese", "zho_Hans"), "zu": ("Zulu", "zul_Latn"),
}

MBART_CODE = re.compile(r"^[a-z]{2}_[A-Z]{2}$")
NLLB_CODE = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}$")
M2M_TOKEN = re.compile(r"^__([a-z]{2,3})__$")
MARIAN_TOKEN = re.compile(r"^>>([A-Za-z_]+)<<$")
OPUS_PAIR = re.compile(r"opus-mt-([a-z]{2,3})-([a-z]{2,3})$")

FAMILIES = ("marian", "mbart", "nllb", "m2m100", "t5", "chat", "seq2seq")


@dataclass(frozen=True)
class Languages:
    """A translation direction resolved for one model: the codes it wants and how to pass them."""

    family: str
    source: str | None  # as given (plain code)
    target: str | None
    source_code: str | None = None  # the family's own codes
    target_code: str | None = None
    prefix: str = ""  # text put before every input (Marian `>>es<< `, T5 `translate ... to ...: `)
    target_token: str | None = None  # the token the decoder is forced to start with (mBART, NLLB, M2M100)

    def manifest(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.target, "family": self.family,
                "codes": {"from": self.source_code, "to": self.target_code}}


def name_of(code: str) -> str:
    """English name of a plain code, for instructions and T5 prefixes; unknown codes pass through."""
    if code in LANGUAGES:
        return LANGUAGES[code][0]
    for plain, (name, nllb) in LANGUAGES.items():
        if code == nllb or code.split("_")[0] == plain:
            return name
    return code


def family_of(model_type: str, is_encoder_decoder: bool, tokenizer: Any) -> str:
    """Which code scheme a loaded model uses."""
    if not is_encoder_decoder:
        return "chat"
    specials = special_tokens(tokenizer)
    if model_type == "marian":
        return "marian"
    if model_type in ("mbart", "mbart50") and any(MBART_CODE.match(t) for t in specials):
        return "mbart"
    if model_type in ("m2m_100", "nllb", "nllb_moe"):
        if any(NLLB_CODE.match(t) for t in specials) or "nllb" in type(tokenizer).__name__.lower():
            return "nllb"
        return "m2m100"
    if model_type in ("t5", "mt5", "umt5", "longt5"):
        return "t5"
    return "seq2seq"


def special_tokens(tokenizer: Any) -> set[str]:
    """Special and added tokens, and the language tokens tokenizers keep apart (M2M100's `__xx__`)."""
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    tokens.update(str(t) for t in (getattr(tokenizer, "lang_code_to_token", None) or {}).values())
    tokens.update(str(t) for t in (getattr(tokenizer, "lang_code_to_id", None) or {}))
    tokens.update(str(t) for t in getattr(tokenizer, "additional_special_tokens", []) or [])
    tokens.update(getattr(tokenizer, "get_added_vocab", dict)().keys())
    return tokens


def family_code(family: str, code: str, available: Iterable[str]) -> str:
    """The family's code for a plain code, checked against the codes the model has."""
    have = set(available)
    if code in have:
        return code
    if family == "mbart":
        candidates = sorted(c for c in have if c.split("_")[0] == code)
    elif family == "nllb":
        wanted = LANGUAGES[code][1] if code in LANGUAGES else None
        candidates = [wanted] if wanted in have else sorted(c for c in have if c.split("_")[0] == code)
    else:
        candidates = []
    if not candidates:
        raise UsageError(f"this {family} model has no language {code!r}" + _examples(have))
    return candidates[0]


def _examples(have: set[str]) -> str:
    shown = sorted(have)[:8]
    return f" (it has {len(have)} codes, e.g. {', '.join(shown)})" if shown else ""


def resolve(family: str, tokenizer: Any, model_id: str, source: str | None, target: str | None,
            task_prefixes: dict[str, str] | None = None) -> Languages:
    """Map --from/--to onto a model; an impossible pair is a UsageError that names what is possible."""
    if family == "chat":
        if not target:
            raise UsageError("--to is needed to translate with a chat model")
        return Languages(family, source, target)
    if family == "marian":
        return _marian(tokenizer, model_id, source, target)
    if family == "mbart":
        codes = {t for t in special_tokens(tokenizer) if MBART_CODE.match(t)}
        return _coded(family, codes, source, target, lambda c: c)
    if family == "nllb":
        codes = {t for t in special_tokens(tokenizer) if NLLB_CODE.match(t)}
        return _coded(family, codes, source, target, lambda c: c)
    if family == "m2m100":
        codes = {m.group(1) for t in special_tokens(tokenizer) if (m := M2M_TOKEN.match(t))}
        return _coded(family, codes, source, target, lambda c: f"__{c}__")
    if family == "t5":
        if not source or not target:
            raise UsageError("--from and --to are needed to translate with T5")
        key = f"translation_{source}_to_{target}"
        prefix = (task_prefixes or {}).get(key) or f"translate {name_of(source)} to {name_of(target)}: "
        return Languages(family, source, target, source, target, prefix=prefix)
    return Languages(family, source, target)  # any other seq2seq model translates the one way it was trained


def _coded(family: str, codes: set[str], source: str | None, target: str | None, token) -> Languages:
    if not source or not target:
        raise UsageError(f"--from and --to are needed for this {family} model")
    if not codes:
        raise UsageError(f"this {family} model's tokenizer has no language codes")
    src, tgt = family_code(family, source, codes), family_code(family, target, codes)
    if src == tgt:
        raise UsageError(f"--from and --to are the same language ({src})")
    return Languages(family, source, target, src, tgt, target_token=token(tgt))


def same_language(a: str, b: str) -> bool:
    """en and eng (and es_XX, spa_Latn) name one language."""
    def norm(code: str) -> str:
        head = code.split("_")[0].lower()
        for plain, (_, nllb) in LANGUAGES.items():
            if head == nllb.split("_")[0]:
                return plain
        return head

    return norm(a) == norm(b)


def marian_pair(tokenizer: Any, model_id: str) -> tuple[str | None, str | None]:
    """The one direction a Marian model was trained for, from its tokenizer or its opus-mt name."""
    src, tgt = getattr(tokenizer, "source_lang", None), getattr(tokenizer, "target_lang", None)
    if src and tgt:
        return src, tgt
    if m := OPUS_PAIR.search(model_id.rstrip("/").split("@")[0]):
        return m.group(1), m.group(2)
    return None, None


def _marian(tokenizer: Any, model_id: str, source: str | None, target: str | None) -> Languages:
    targets = {m.group(1): t for t in getattr(tokenizer, "supported_language_codes", []) or []
               if (m := MARIAN_TOKEN.match(t))}
    pair_src, pair_tgt = marian_pair(tokenizer, model_id)
    if source and pair_src and not same_language(source, pair_src) and pair_src.islower():
        raise UsageError(f"this Marian model translates from {pair_src!r}, not {source!r}")
    if targets:  # one model, many targets: the target is a token before the text
        if not target:
            raise UsageError(f"--to is needed; this Marian model has targets {', '.join(sorted(targets))}")
        code = target if target in targets else LANGUAGES.get(target, ("", ""))[1].split("_")[0]
        if code not in targets:
            known = ", ".join(sorted(targets))
            raise UsageError(f"this Marian model cannot translate into {target!r} (targets: {known})")
        return Languages("marian", source or pair_src, target, source or pair_src, code, prefix=f"{targets[code]} ")
    if target and pair_tgt and not same_language(target, pair_tgt) and pair_tgt.islower():
        raise UsageError(f"this Marian model translates {pair_src}->{pair_tgt}; it cannot translate into {target!r}")
    return Languages("marian", source or pair_src, target or pair_tgt, source or pair_src, target or pair_tgt)
