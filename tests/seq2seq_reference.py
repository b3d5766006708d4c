"""transformers' own answer for a seq2seq model, to hold lmpipe's tools against."""

from __future__ import annotations

from functools import cache
from pathlib import Path


@cache
def _load(folder: str):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForSeq2SeqLM.from_pretrained(folder).eval()


def reference(folder: Path, texts: list[str], prefix: str = "", src_lang: str | None = None,
              forced: str | None = None, **kwargs) -> list[str]:
    """model.generate on exactly these texts as one batch, decoded as transformers decodes."""
    import torch

    tokenizer, model = _load(str(folder))
    if src_lang:
        tokenizer.src_lang = src_lang
    if forced:
        kwargs["forced_bos_token_id"] = tokenizer.convert_tokens_to_ids(forced)
    inputs = tokenizer([prefix + t for t in texts], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**inputs, **kwargs)
    return tokenizer.batch_decode(out, skip_special_tokens=True)


def unbatched(folder: Path, texts: list[str], **kwargs) -> list[str]:
    return [reference(folder, [t], **kwargs)[0] for t in texts]
