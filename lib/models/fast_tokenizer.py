"""A model's tokenizer from its tokenizer.json, with the `tokenizers` library alone: no torch, no
transformers, so lm-tokenize and lm-chunk start in a blink.

transformers (5.x, TokenizersBackend) builds its fast tokenizer from the same file, then applies
the model's tokenizer_config.json: the named special tokens (bos, eos, unk, sep, pad, cls, mask,
and model-specific `*_token`s), the extra special tokens, added tokens missing from the file,
a plain post-processor for a file without one, `split_special_tokens`,
`clean_up_tokenization_spaces`, and the chat template (chat_template.jinja or the config's).
`JsonTokenizer` applies the same settings the same way, so ids, offsets, tokens and special flags
equal AutoTokenizer's (tests/test_fast_tokenizer.py compares them). A folder without
tokenizer.json (a sentencepiece-only model) has no fast path: `load_any` falls back to
transformers and says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ModelNotFound
from . import gguf
from .loading import load_tokenizer

NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
LEGACY_MAP_FILE = "special_tokens_map.json"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATES_DIR = "additional_chat_templates"
CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))  # transformers' clean_up_tokenization, in order


def _content(value: Any) -> str | None:
    """A special token as the config stores it: a string, or an AddedToken's dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _added_token(value: Any, special: bool):
    from tokenizers import AddedToken

    if isinstance(value, dict):
        fields = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized") if k in value}
        return AddedToken(value["content"], special=value.get("special", special), **fields)
    return AddedToken(value, special=special)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}


def chat_template_of(folder: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """The chat template transformers would load: chat_template.jinja (with any named ones beside
    it, as a dict), else the config's own `chat_template` (a string or a list of named ones)."""
    named = {p.stem: p.read_text(encoding="utf-8") for p in sorted((folder / TEMPLATES_DIR).glob("*.jinja"))}
    if (folder / TEMPLATE_FILE).is_file():
        default = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
        return {"default": default, **named} if named else default
    template = config.get("chat_template")
    if isinstance(template, list):
        template = {t["name"]: t["template"] for t in template}
    if named:
        return {**(template if isinstance(template, dict) else {"default": template} if template else {}), **named}
    return template


class JsonTokenizer:
    """A tokenizer.json plus the tokenizer_config.json beside it, as transformers applies them."""

    is_fast = True

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer, processors

        self.folder = Path(folder)
        self.backend = Tokenizer.from_file(str(self.folder.joinpath(TOKENIZER_FILE)))
        self.backend.no_truncation()  # transformers encodes one text untruncated and unpadded unless asked
        self.backend.no_padding()
        config = _read_json(self.folder / CONFIG_FILE)
        if "additional_special_tokens" in config and not config.get("extra_special_tokens"):
            config["extra_special_tokens"] = config.pop("additional_special_tokens")
        if "added_tokens_decoder" not in config:  # legacy folders keep their special tokens in a map of their own
            for key, value in _read_json(self.folder / LEGACY_MAP_FILE).items():
                if key == "extra_special_tokens" and isinstance(value, list):
                    config[key] = [*(config.get(key) or []), *(t for t in value if t not in (config.get(key) or []))]
                else:
                    config[key] = value
        self.config = config
        # Named special tokens: the standard ones, then model-specific `*_token`s and a dict of extras.
        self.named: dict[str, Any] = {k: config[k] for k in NAMED if _content(config.get(k)) is not None}
        extra = config.get("extra_special_tokens") or []
        specific = {k: v for k, v in config.items() if k.endswith("_token") and k not in NAMED and isinstance(v, str)}
        if isinstance(extra, dict):
            specific.update(extra)
            extra = []
        self.named.update(specific)
        self.extra: list[Any] = list(extra)
        self._add_missing(config.get("added_tokens_decoder") or {})
        self.backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        if self.backend.post_processor is None:
            # transformers drops the config's add_bos_token/add_eos_token when a tokenizer.json exists,
            # and gives a file without a post-processor a plain one (no BOS, no EOS).
            self.backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False)) and (
            type(self.backend.model).__name__ != "BPE"
            or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")))
        self.chat_template = chat_template_of(self.folder, config)

    def _add_missing(self, decoder: dict[str, Any]) -> None:
        """Added tokens the config knows and the file lacks, then special tokens not yet in the vocabulary."""
        have = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        to_add = [_added_token(t, special=True) for _, t in sorted(decoder.items(), key=lambda kv: int(kv[0]))
                  if _content(t) not in have]
        names = {_content(v) for v in self.named.values()}
        seen = have | {t.content for t in to_add}
        for value in [*self.named.values(), *self.extra]:
            if _content(value) not in seen:
                token = _added_token(value, special=True)
                if _content(value) in names:
                    token.special = True
                to_add.append(token)
                seen.add(token.content)
        if to_add:
            self.backend.add_tokens(to_add)

    # What lm-tokenize and the chat renderer read.

    def token(self, name: str) -> str | None:
        return _content(self.named.get(name))

    @property
    def special_tokens_map(self) -> dict[str, str | None]:
        """The named special tokens, as a chat template sees them (bos_token, eos_token, ...)."""
        return {k: _content(v) for k, v in self.named.items()}

    @property
    def all_special_tokens(self) -> list[str | None]:
        return list(dict.fromkeys([*self.special_tokens_map.values(), *map(_content, self.extra)]))

    @property
    def all_special_ids(self) -> list[int | None]:
        unk = self.backend.token_to_id(self.token("unk_token") or "") if self.token("unk_token") else None
        return [i if t is not None and (i := self.backend.token_to_id(t)) is not None else unk
                for t in self.all_special_tokens]

    def get_added_vocab(self) -> dict[str, int]:
        return {t.content: i for i, t in sorted(self.backend.get_added_tokens_decoder().items())}

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True):
        """The `tokenizers` Encoding: ids, offsets, tokens."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.backend.id_to_token(i) for i in ids]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        if self.clean_up:
            for before, after in CLEANUPS:
                text = text.replace(before, after)
        return text

    # --add-token, --add-special-token, --save.

    def add_tokens(self, tokens: list[str]) -> None:
        from tokenizers import AddedToken

        self.backend.add_tokens([AddedToken(t, special=False, normalized=True) for t in tokens])

    def add_special_tokens(self, tokens: list[str]) -> None:
        from tokenizers import AddedToken

        self.extra.extend(t for t in tokens if t not in self.extra)
        self.backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])

    def save(self, folder: str | Path) -> None:
        """tokenizer.json, the config with the extra special tokens and added tokens, the chat template:
        a folder that both this class and AutoTokenizer load to the same tokenizer."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(out.joinpath(TOKENIZER_FILE)))
        config = {k: v for k, v in self.config.items() if k not in ("chat_template", "added_tokens_decoder")}
        config["extra_special_tokens"] = [_content(t) for t in self.extra]
        config["added_tokens_decoder"] = {
            str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                     "single_word": t.single_word, "special": t.special}
            for i, t in sorted(self.backend.get_added_tokens_decoder().items())}
        template = self.chat_template
        if isinstance(template, str):
            (out / TEMPLATE_FILE).write_text(template, encoding="utf-8")
        elif isinstance(template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in template.items()]
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class SlowTokenizer:
    """transformers' tokenizer behind JsonTokenizer's methods, for a model without tokenizer.json."""

    def __init__(self, hf: Any):
        self.hf = hf
        self.is_fast = bool(hf.is_fast)
        self.chat_template = hf.chat_template

    @property
    def special_tokens_map(self) -> dict[str, str]:
        return dict(self.hf.special_tokens_map)

    @property
    def all_special_ids(self) -> list[int]:
        return list(self.hf.all_special_ids)

    def get_added_vocab(self) -> dict[str, int]:
        return self.hf.get_added_vocab()

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> SlowEncoding:
        enc = self.hf(text, add_special_tokens=add_special_tokens, return_offsets_mapping=self.is_fast)
        offsets = [tuple(o) for o in enc["offset_mapping"]] if self.is_fast else None
        return SlowEncoding(list(enc["input_ids"]), offsets)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return self.hf.convert_ids_to_tokens(ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def add_tokens(self, tokens: list[str]) -> None:
        self.hf.add_tokens(tokens)

    def add_special_tokens(self, tokens: list[str]) -> None:
        self.hf.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)

    def save(self, folder: str | Path) -> None:
        self.hf.save_pretrained(folder)


class SlowEncoding:
    """What SlowTokenizer.encode returns: the ids, and offsets where transformers has them."""

    def __init__(self, ids: list[int], offsets: list[tuple[int, int]] | None):
        self.ids, self.offsets = ids, offsets


def tokenizer_folder(ref: Any) -> Path | None:
    """The folder holding `ref`'s tokenizer files; None for a GGUF not converted yet."""
    if ref.kind in ("embedded", "gguf"):
        return gguf.finished_folder(ref.path)
    return Path(ref.path)


def load_any(ref: Any, notify: Callable[[str], None]) -> JsonTokenizer | SlowTokenizer:
    """`ref`'s tokenizer: from tokenizer.json when there is one (no torch, no transformers), else
    through transformers, after saying why."""
    folder = tokenizer_folder(ref)
    if folder is not None and folder.joinpath(TOKENIZER_FILE).is_file():
        try:
            return JsonTokenizer(folder)
        except Exception as exc:  # tokenizers reports a malformed file as a plain Exception
            why = str(exc).strip() or type(exc).__name__
            raise ModelNotFound(f"cannot load a tokenizer from {ref.name}: {why}") from None
    why = f"{ref.name} is a GGUF not converted yet" if folder is None else f"{folder} has no {TOKENIZER_FILE}"
    notify(f"{why}: loading the slow tokenizer through transformers")
    return SlowTokenizer(load_tokenizer(ref))
