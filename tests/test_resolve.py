"""Model resolution: aliases, folders, GGUF files, hub ids from the cache, clear errors."""

import os

import pytest

from lmpipe.errors import ModelNotFound
from lmpipe.models.resolve import EMBEDDED_ID, resolve


def test_alias_is_the_embedded_gguf():
    ref = resolve("smollm2")
    assert ref.kind == "embedded" and ref.id == EMBEDDED_ID and ref.path.suffix == ".gguf"
    assert resolve(None) == ref


def test_folder(tiny_llama):
    ref = resolve(str(tiny_llama))
    assert (ref.kind, ref.path) == ("folder", tiny_llama.resolve())


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ModelNotFound, match="no GGUF file"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFound, match="holds no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(ModelNotFound, match="no model at"):
        resolve("./not-here")
    with pytest.raises(ModelNotFound, match="fetch it with: lm-pull org/model"):
        resolve("org/model")


def test_hub_id_resolves_from_the_hub_cache_layout(tiny_llama):
    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}
    cache = os.environ["HF_HUB_CACHE"]
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = os.path.join(cache, "models--test--tiny")
    snap = os.path.join(repo, "snapshots", commit)
    os.makedirs(snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    for p in tiny_llama.iterdir():
        os.symlink(p, os.path.join(snap, p.name))
    ref = resolve("test/tiny")
    assert (ref.kind, ref.id, ref.revision) == ("hub", "test/tiny", commit)
    assert resolve(f"test/tiny@{commit}").path == ref.path
