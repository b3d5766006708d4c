"""GGUF files in lmpipe's cache: their config and tokenizer, and (where needed) a float conversion.

A GGUF's weights are read from the file itself, tensor by tensor (lmpipe.models.gguf_weights);
what the cache keeps of it is its description: the config, the tokenizer and the generation
settings transformers reads from its metadata (reading a tokenizer out of a GGUF takes
seconds; its saved files a fraction of one). A GGUF whose tensors that reader cannot place
(and the embedded model, whose float32 conversion the rest of lmpipe's tests are built on) is
converted as before: dequantized by transformers and saved as safetensors. Each is built
once, atomically (lmpipe.models.derived.build_once).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import paths
from . import gguf_reader
from .derived import MARKER, build_once, cache_key, conversion_info, sha256_file  # noqa: F401 (gguf.X for callers)


def converted_folder(gguf: Path) -> Path:
    return paths.models_dir() / f"{gguf.stem}-{cache_key(gguf)}"


def described_folder(gguf: Path) -> Path:
    return paths.models_dir() / f"{gguf.stem}-{cache_key(gguf)}-described"


def ensure_described(gguf: Path, notify: Callable[[str], None] = lambda _: None) -> Path:
    """The folder holding `gguf`'s config, tokenizer and generation settings (no weights), made first if need be."""
    target = described_folder(gguf)
    return build_once(target, gguf, lambda tmp: _describe(gguf, tmp),
                      f"reading {gguf.name}'s config and tokenizer into {target.parent} (once)", notify,
                      extra={"weights": "read from the source GGUF"})


def finished_folder(gguf: Path) -> Path | None:
    """Whichever of `gguf`'s cache folders is finished (its description, or its float conversion); None if neither."""
    return next((f for f in (described_folder(gguf), converted_folder(gguf)) if conversion_info(f) is not None), None)


def _describe(gguf: Path, out: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    with gguf_reader.parsed_once():  # transformers reads the file for each; one parse serves both
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


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
    with gguf_reader.parsed_once():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantized in memory; drop the GGUF quantizer so they save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
