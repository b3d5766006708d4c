"""Loading returns what it frees: glibc's heap does not keep a model's temporaries resident."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmpipe.models.allocator import _glibc

# Temporaries, each followed by a small block that is kept (as a quantized layer's packed weights
# follow its unpacked values), then the temporaries freed: in glibc's heap each is a hole the
# kept block after it pins.
CHURN = """
import ctypes, json, sys
from lmpipe.models.allocator import _glibc, returning_freed_memory

libc = _glibc()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

def block(size):
    pointer = libc.malloc(size)
    ctypes.memset(pointer, 1, size)  # resident
    return pointer

def churn():
    temporaries, kept = [], []
    for i in range(40):
        temporaries.append(block(4 * 2**20))
        kept.append(block(2**18))  # 256 KiB after each temporary
    for pointer in temporaries:
        libc.free(pointer)
    return kept

libc.free(block(16 * 2**20))  # freeing a mapped 16 MiB block makes glibc serve smaller ones from its heap
before = anon_mb()
if sys.argv[1] == "loading":
    with returning_freed_memory():
        kept = churn()
else:
    kept = churn()
print(json.dumps({"resident_mb": anon_mb() - before}))
"""


def resident_after(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["resident_mb"]


@pytest.mark.skipif(_glibc() is None, reason="glibc's allocator policy; other C libraries keep their own")
def test_memory_freed_while_loading_goes_back_to_the_system():
    kept = 40 * 0.25
    # glibc's own policy: after the first free, temporaries come from the heap, pinned by what is kept after them.
    assert resident_after("plain") > kept + 100
    assert resident_after("loading") < kept + 20
