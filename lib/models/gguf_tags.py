"""Hub GGUF files named as users write them: `org/repo:Q4_K_M`, as `ollama pull hf.co/org/repo:Q4_K_M`
and `llama-cli -hf org/repo:Q4_K_M` name them.

A GGUF repository holds one file per quantization type, the type in its name
(`Llama-3.2-1B-Instruct-Q4_K_M.gguf`, `qwen2.5-1.5b-instruct-q4_k_m.gguf`); the tag picks
that file, case aside. lm-pull downloads only it; --model finds it in the hub cache.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import ModelNotFound

# A quantization type between separators at the end of a file's stem: Q4_K_M, IQ3_XXS, Q8_0, F16, BF16, TQ1_0, MXFP4.
_TAG = re.compile(r"(?:^|[-._])((?:I?Q\d+(?:_[A-Z0-9]+)*)|F16|BF16|F32|TQ\d_\d|MXFP4)$", re.IGNORECASE)


def split(name: str) -> tuple[str, str | None]:
    """`org/repo:TAG` (or `org/repo@rev:TAG`) as (the name without the tag, the tag upper-cased or None)."""
    base, colon, tag = name.rpartition(":")
    if not colon or not tag or "/" in tag or "@" in tag or "/" not in base:
        return name, None
    return base, tag.upper()


def tag_of(filename: str) -> str | None:
    """The quantization type a GGUF file's name gives, upper-cased; None for other files."""
    leaf = filename.rsplit("/", 1)[-1]
    if not leaf.lower().endswith(".gguf"):
        return None
    found = _TAG.search(leaf[:-len(".gguf")])
    return found[1].upper() if found else None


def pick_file(files: Iterable[str], tag: str, repo: str, where: str) -> str:
    """The one GGUF of `files` with `tag`: a one-line ModelNotFound listing the tags present otherwise."""
    files = list(files)
    matches = sorted(f for f in files if tag_of(f) == tag)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ModelNotFound(f"{repo} {where} has {len(matches)} {tag} GGUF files ({', '.join(matches)}); name one path")
    present = sorted({t for f in files if (t := tag_of(f)) is not None})
    listed = ", ".join(present) if present else "none"
    raise ModelNotFound(f"{repo} {where} has no {tag} GGUF file; its tags: {listed}")
