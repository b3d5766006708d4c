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


def _hub_snapshot(repo_id, files, commit="89abcdef0123456789abcdef0123456789abcdef"):
    """A repo in the hub cache layout holding `files` ({name: source path to link to})."""
    repo = os.path.join(os.environ["HF_HUB_CACHE"], "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", commit)
    os.makedirs(snap)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)
    for name, source in files.items():
        os.symlink(source, os.path.join(snap, name))
    return snap


def test_a_tag_names_the_gguf_of_that_type_in_a_cached_repo(tmp_path):
    from tiny_gguf import write_tiny_llama_gguf

    from lmpipe.models.loading import ModelSettings, load

    q4 = write_tiny_llama_gguf(tmp_path / "q4.gguf", "Q4_K")
    q8 = tmp_path / "q8.gguf"
    q8.write_bytes(b"GGUF")
    snap = _hub_snapshot("test/tiny-gguf", {"Tiny-Q4_K_M.gguf": q4, "tiny.q8_0.gguf": q8})
    ref = resolve("test/tiny-gguf:q4_k_m")
    expected = ("gguf", "test/tiny-gguf:Q4_K_M", os.path.join(snap, "Tiny-Q4_K_M.gguf"))
    assert (ref.kind, ref.id, str(ref.path)) == expected
    assert resolve("test/tiny-gguf:Q8_0").path.name == "tiny.q8_0.gguf"
    with pytest.raises(ModelNotFound, match=r"^test/tiny-gguf in the Hugging Face cache has no Q6_K GGUF file; "
                                            r"its tags: Q4_K_M, Q8_0$"):
        resolve("test/tiny-gguf:Q6_K")
    with pytest.raises(ModelNotFound, match=r"name one by its tag, test/tiny-gguf:TAG \(tags: Q4_K_M, Q8_0\)$"):
        resolve("test/tiny-gguf")
    lm = load(ModelSettings("test/tiny-gguf:Q4_K_M"))
    from lmpipe.models.gguf_weights import own_scales_run

    q4_k = "q4k" if own_scales_run() else "int4"  # on its own scales where lmpipe's kernels run (without AMX)
    assert lm.identity["model"] == "test/tiny-gguf:Q4_K_M" and lm.identity["gguf_tensors"]["Q4_K"][q4_k] == 14


def test_a_gguf_only_repo_with_one_file_is_that_file(tmp_path):
    gguf = tmp_path / "only.gguf"
    gguf.write_bytes(b"GGUF")
    _hub_snapshot("test/one-gguf", {"model-Q4_0.gguf": gguf, "README.md": gguf})
    ref = resolve("test/one-gguf")
    assert (ref.kind, ref.id, ref.path.name) == ("gguf", "test/one-gguf:Q4_0", "model-Q4_0.gguf")
