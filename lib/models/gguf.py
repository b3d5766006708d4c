"""GGUF files, converted once into lmpipe's cache as safetensors plus tokenizer.

Dequantizing a GGUF takes seconds to tens of seconds; loading safetensors takes a fraction of
one. The conversion is built once, atomically (lmpipe.models.derived.build_once).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from .. import paths
from .derived import MARKER, build_once, cache_key, conversion_info, sha256_file  # noqa: F401 (gguf.X for callers)


def converted_folder(gguf: Path) -> Path:
    return paths.models_dir() / f"{gguf.stem}-{cache_key(gguf)}"


def ensure_converted(gguf: Path, notify: Callable[[str], None] = lambda _: None) -> Path:
    """The converted folder for `gguf`, converting it first if the cache has none."""
    target = converted_folder(gguf)
    return build_once(target, gguf, lambda tmp: _convert(gguf, tmp),
                      f"converting {gguf.name} to safetensors in {target.parent} (once)", notify)


def _convert(gguf: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not sys.stderr.isatty():
        # transformers' GGUF reader draws its own tqdm bar, outside its logging switch; in a pipe
        # stderr is for messages, so hand it a plain iterator instead.
        from transformers import modeling_gguf_pytorch_utils as reader

        reader.tqdm = lambda iterable, **_: iterable
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantized in memory; drop the GGUF quantizer so they save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
