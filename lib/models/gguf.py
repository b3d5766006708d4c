"""GGUF files, converted once into lmpipe's cache as safetensors plus tokenizer.

Dequantizing a GGUF takes seconds to tens of seconds; loading safetensors takes a fraction of
one. The conversion is written to a temporary folder and renamed into place, so an
interrupted conversion never leaves a half-written model under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from .. import paths
from ..version import __version__

MARKER = "lmpipe-conversion.json"  # written last, inside the temporary folder, before the rename


def cache_key(gguf: Path) -> str:
    """A content fingerprint: size plus the first and last MiB. It finds the same conversion
    wherever the file is installed, without reading 100 MB or more on every start."""
    size = gguf.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with gguf.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def converted_folder(gguf: Path) -> Path:
    return paths.models_dir() / f"{gguf.stem}-{cache_key(gguf)}"


def conversion_info(folder: Path) -> dict | None:
    """The marker of a finished conversion, or None if the folder holds none."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def ensure_converted(gguf: Path, notify: Callable[[str], None] = lambda _: None) -> Path:
    """The converted folder for `gguf`, converting it first if the cache has none."""
    target = converted_folder(gguf)
    if conversion_info(target) is not None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    notify(f"converting {gguf.name} to safetensors in {target.parent} (once)")
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert(gguf, tmp)
        info = {
            "source": str(gguf.resolve()),
            "sha256": sha256_file(gguf),
            "converted_by": f"lmpipe {__version__}",
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        if target.exists() and conversion_info(target) is None:
            shutil.rmtree(target)  # left by something other than a finished conversion
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first (the target exists and is not empty): use theirs.
            if conversion_info(target) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
