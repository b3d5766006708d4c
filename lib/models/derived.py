"""Models lmpipe derives once into its cache (a GGUF converted, a packaged zip unzipped, a quantized copy).

Each is built in a temporary folder beside its final name, marked finished last, and renamed into
place: an interrupted build never leaves a half-written model under the final name, and two
processes building at once both end with one finished folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..version import __version__

MARKER = "lmpipe-conversion.json"  # written last, inside the temporary folder, before the rename


def cache_key(source: Path) -> str:
    """A content fingerprint: size plus the first and last MiB. It finds the same derived model
    wherever the source file is installed, without reading a whole model file on every start."""
    size = source.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with source.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def conversion_info(folder: Path) -> dict | None:
    """The marker of a finished build, or None if the folder holds none."""
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


@contextmanager
def written_whole(target: Path, replace: bool = False) -> Iterator[Path]:
    """A new folder beside `target` to write into, renamed to `target` when the block ends without
    an error: a reader finds the whole folder or none. The folder holds MARKER once finished. An
    existing `target` is replaced where `replace` or where it is unfinished; else, where another
    process finished first, theirs is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists() and (replace or conversion_info(target) is None):
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if conversion_info(target) is None:  # not another process's finished folder
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_once(target: Path, source: Path, build: Callable[[Path], None], message: str,
               notify: Callable[[str], None] = lambda _: None, extra: dict[str, Any] | None = None) -> Path:
    """`target`, built from `source` by `build(tmp_folder)` first if the cache has no finished one."""
    if conversion_info(target) is not None:
        return target
    notify(message)
    started = time.perf_counter()
    with written_whole(target) as tmp:
        build(tmp)
        info = {
            "source": str(source.resolve()),
            "sha256": sha256_file(source),
            "converted_by": f"lmpipe {__version__}",
            "seconds": round(time.perf_counter() - started, 2),
            **(extra or {}),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
    return target
