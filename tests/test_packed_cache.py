"""A GGUF's packed layers cached once and mapped at later loads (lmpipe.models.packed_cache)."""

from __future__ import annotations

import json

import gguf
import pytest
from tiny_gguf import Q4_K_M, write_tiny_llama_gguf

from lmpipe.models import gguf_reader, packed_cache
from lmpipe.models.derived import MARKER
from lmpipe.models.kernels import vnni
from lmpipe.models.loading import ModelSettings, load

pytestmark = pytest.mark.skipif(not vnni.available(), reason="the cache holds lmpipe's kernels' packing only")


def _logits(lm):
    ids = lm.tokenizer("The quick brown fox jumps", return_tensors="pt").input_ids
    return lm.model(ids).logits


def test_a_second_load_maps_the_packing_and_a_damaged_or_old_one_is_rebuilt(tmp_path):
    import torch

    path = write_tiny_llama_gguf(tmp_path / "packed.gguf", "Q4_K", Q4_K_M, seed=7)
    first = load(ModelSettings(str(path)))
    assert first.identity["packing"] == "packed"
    folder = packed_cache.folder(path, None, torch.float32)
    cached = sum(f.stat().st_size for f in folder.iterdir())
    # int4's bfloat16 scale and zero per 32 weights (Q4_K: 18 bytes per 32), int8 per row for Q6_K.
    assert cached < 1.3 * path.stat().st_size, (cached, path.stat().st_size)
    want = _logits(first)

    def unread(*_):
        raise AssertionError("the GGUF was opened")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", unread)  # a mapped load reads the packed cache alone
        patch.setattr(gguf_reader, "reader", unread)
        second = load(ModelSettings(str(path)))
    assert second.identity["packing"] == "mapped"
    assert torch.equal(_logits(second), want)  # the same bytes through the same kernels

    data = folder / "packed.bin"
    damaged = bytearray(data.read_bytes())
    damaged[:64] = bytes(255 - b for b in damaged[:64])  # the first layer's first rows
    data.write_bytes(bytes(damaged))
    third = load(ModelSettings(str(path)))
    assert third.identity["packing"] == "packed"
    assert torch.equal(_logits(third), want)
    assert load(ModelSettings(str(path))).identity["packing"] == "mapped"  # written again, whole

    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({**marker, "format": packed_cache.FORMAT - 1}))
    assert load(ModelSettings(str(path))).identity["packing"] == "packed"
    assert json.loads((folder / MARKER).read_text())["format"] == packed_cache.FORMAT


def test_a_float_file_has_no_packing(tmp_path):
    path = write_tiny_llama_gguf(tmp_path / "float.gguf", "F16", seed=7)
    assert load(ModelSettings(str(path))).identity["packing"] == "none"
    assert not list(packed_cache.folder(path, None, "torch.float32").parent.glob("float-*-packed-*"))
