"""gguf-py's GGUFReader, parsing from a plain view of the file's map, and one parse per file.

GGUFReader parses every metadata value by slicing its numpy.memmap, two slices per string. A
memmap's slice runs Python code of numpy's (memmap.__getitem__, __array_finalize__), so a
vocabulary of 50k tokens and 50k merges costs hundreds of thousands of such calls: most of a
GGUF's parse, which grows with the vocabulary. The same slices of a plain ndarray over the same
mapping run in C. `reader` parses that way, and within `parsed_once` a load parses each file
once, transformers' GGUF loader included.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

_kept = threading.local()  # within parsed_once: {(path, size, mtime): reader}


@cache
def _reader_class() -> type:
    import numpy as np
    from gguf.gguf_reader import GGUFReader  # the class itself: parsed_once replaces the package's name

    class PlainViewReader(GGUFReader):
        """GGUFReader whose reads slice a plain ndarray of the map (the parse's own method, `_get`)."""

        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self._plain = self.data.view(np.ndarray)
            count = int(count)
            end = offset + np.dtype(dtype).itemsize * count
            array = plain[offset:end].view(dtype=dtype)[:count]
            return array.view(array.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return PlainViewReader


def reader(path: str | Path, mode: str = "r") -> Any:
    """A parsed GGUFReader of `path` (GGUFReader's arguments): within parsed_once, the same one for
    every read-only call on an unchanged file."""
    kept: dict[tuple[str, int, int], Any] | None = getattr(_kept, "readers", None)
    if kept is None or mode != "r":
        return _reader_class()(str(path), mode)
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in kept:
        kept[key] = _reader_class()(str(path))
    return kept[key]


@contextmanager
def parsed_once() -> Iterator[None]:
    """Within (on this thread): each GGUF is parsed once, by `reader`, also for transformers' GGUF
    loader, which otherwise parses the file again for the config and again for the tokenizer.

    transformers imports gguf.GGUFReader inside load_gguf_checkpoint at each call, so the
    module's attribute, replaced for the span, reaches it. On leaving, the readers (and their
    mappings, once nothing else holds their arrays) are dropped and the attribute restored."""
    import gguf

    if getattr(_kept, "readers", None) is not None:  # nested: the outer span keeps them
        yield
        return
    original = gguf.GGUFReader
    _kept.readers = {}
    setattr(gguf, "GGUFReader", reader)  # noqa: B010 (a function where the package names a class: mypy would refuse it)
    try:
        yield
    finally:
        setattr(gguf, "GGUFReader", original)  # noqa: B010
        _kept.readers = None
