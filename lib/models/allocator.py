"""The C allocator while a model loads: freed blocks go back to the system instead of staying resident.

Loading allocates and frees many large temporaries (a quantized layer is unpacked to int32,
packed, copied into aligned memory; transformers' own loading casts and copies). glibc serves
blocks over its mmap threshold (LOADING_THRESHOLD at start) with mmap and returns them on free,
but every such free raises the threshold to that block's size, up to DECODING_THRESHOLD. After
the first few layers the temporaries come from the heap, where the packed weights kept between
them pin it: freed heap stays resident, up to the quantized model's own size and more, and a
different amount in every run, so a load's peak is neither small nor repeatable. So while a
model loads the threshold stays at glibc's initial value, and afterwards it is set where
glibc's own adjustment would end, so decode steps keep reusing heap memory rather than mapping
fresh zeroed pages each time, and what the load freed is trimmed.

The setting is process-wide: in lm-serve, other models' steps run with it while one loads.
Other C libraries (macOS, musl) have their own policies: there this does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from functools import cache

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
LOADING_THRESHOLD = 128 * 1024  # glibc's initial value
DECODING_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for its dynamic threshold on 64-bit


@cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)  # the C library the interpreter already runs on
    except OSError:
        return None
    # glibc only: mallopt's parameter numbers differ elsewhere
    return libc if hasattr(libc, "gnu_get_libc_version") else None


@contextlib.contextmanager
def returning_freed_memory() -> Iterator[None]:
    """Inside: large blocks are mapped and unmapped, never kept in the heap. After: the heap
    serves blocks up to DECODING_THRESHOLD again, and its free pages are returned."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, LOADING_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, DECODING_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * DECODING_THRESHOLD)  # as glibc's own adjustment sets it
        libc.malloc_trim(0)
