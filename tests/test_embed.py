"""lm-embed: the packaged all-MiniLM-L6-v2 gives sentence-transformers' own vectors; long texts are
errors or chunked, never truncated; decoders pool their last token."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.backends.embedding import Embedder, EmbedSettings, decoded
from lmpipe.bin.embed import main
from lmpipe.models.loading import ModelSettings

TEXTS = [
    "The cat sat on the mat.", "A dog barked at the mailman.", "Paris is the capital of France.",
    "Madrid is the capital of Spain.", "Pipes connect small tools.", "Each tool does one job well.",
    "Language models read tokens.", "def add(a, b): return a + b", "Bonjour le monde.", "Hallo Welt.",
    "The stock market fell sharply today.", "Interest rates rose by a quarter point.",
    "She plays the violin beautifully.", "Quantum computers use qubits.", "Bread is baked in an oven.",
    "The river flows into the sea.", "Ünïcödé and emoji 🎉 survive.", "x", "Mountains are tall.",
    "A very long sentence " * 20,
]


class Ran:
    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout_bytes, result.stderr_bytes


def run_tool(tool: str, *args: str, input: str = ""):
    """lm-embed in this process (its model loads in a second; torch and sentence-transformers once)."""
    assert tool == "lm-embed"
    return Ran(CliRunner().invoke(main, list(args), input=input, catch_exceptions=False))


def cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_reference():
    from sentence_transformers import SentenceTransformer

    from lmpipe.models.resolve import resolve

    ref = resolve("all-minilm-l6-v2")
    assert ref.kind == "packaged" and (ref.path / "modules.json").is_file()
    return SentenceTransformer(str(ref.path), device="cpu").encode(TEXTS)


@pytest.mark.parametrize("batch", ["1", "8"])
def test_vectors_equal_sentence_transformers(minilm_reference, batch):
    lines = "".join(orjson.dumps({"id": n, "text": t}).decode() + "\n" for n, t in enumerate(TEXTS))
    result = run_tool("lm-embed", "--batch-size", batch, input=lines)
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    assert [r["id"] for r in records] == list(range(len(TEXTS)))
    assert {r["dimensions"] for r in records} == {384}
    assert records[0]["manifest"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert cosines([r["embedding"] for r in records], minilm_reference).min() >= 0.99999


def test_base64_is_the_same_float32_vector():
    lines = "".join(orjson.dumps({"text": t}).decode() + "\n" for t in TEXTS[:3])
    done = [run_tool("lm-embed", *args, input=lines) for args in ([], ["--format", "base64"])]
    assert [d.returncode for d in done] == [0, 0], done[0].stderr + done[1].stderr
    floats, b64 = (jsonl(d.stdout) for d in done)
    assert len(floats) == len(b64) == 3
    # The same batch on the same machine: base64 is the very float32 vector, bit for bit.
    for f, b in zip(floats, b64, strict=True):
        assert isinstance(b["embedding"], str)
        assert np.array_equal(decoded(b["embedding"]), np.asarray(f["embedding"], dtype=np.float32))


def test_too_long_is_an_error_record_or_chunked():
    long = "word " * 400  # 400 tokens; the model reads 256
    lines = orjson.dumps({"text": "short"}).decode() + "\n" + orjson.dumps({"text": long}).decode() + "\n"
    result = run_tool("lm-embed", input=lines)
    assert result.returncode == 1
    short, failed = jsonl(result.stdout)
    assert short["dimensions"] == 384 and "error" not in short
    assert failed["line"] == 2 and "402 tokens" in failed["error"] and "embedding" not in failed
    chunked = jsonl(run_tool("lm-embed", "--chunk", input=lines).stdout)
    assert len(chunked) == 2
    # Batched beside the long text's windows (another padded shape), so equal up to rounding.
    assert chunked[0]["embedding"] == pytest.approx(short["embedding"], abs=1e-5)
    # The mean of the two windows' vectors (254 and 146 tokens of text), weighted by their tokens.
    embedder = Embedder(ModelSettings("all-minilm-l6-v2"))
    ids = embedder.token_ids(long)
    windows = embedder.embed_ids([ids[:254], ids[254:]], EmbedSettings())
    mean = (windows[0] * 256 + windows[1] * 148) / (256 + 148)
    assert cosines([chunked[1]["embedding"]], [mean / np.linalg.norm(mean)]).min() >= 0.99999


def test_decoder_pools_its_last_token_and_normalize(tiny_llama):
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["The quick brown fox", "Pipes connect small tools; each tool does one job well."]
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModel.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        expected = [model(**tok(t, return_tensors="pt")).last_hidden_state[0, -1].numpy() for t in texts]
    lines = "".join(orjson.dumps({"text": t}).decode() + "\n" for t in texts)
    result = run_tool("lm-embed", "-m", str(tiny_llama), "--batch-size", "2", input=lines)
    assert result.returncode == 0, result.stderr
    records = jsonl(result.stdout)
    assert records[0]["manifest"]["pooling"] == "lasttoken"
    got = np.array([r["embedding"] for r in records])
    assert np.allclose(got, expected, atol=1e-4)  # padded in a batch of two, the same as alone
    normalized = jsonl(run_tool("lm-embed", "-m", str(tiny_llama), "--normalize", input=lines).stdout)
    norms = np.linalg.norm(np.array([r["embedding"] for r in normalized]), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-6) and not np.allclose(np.linalg.norm(got, axis=1), 1.0)


def test_packaged_model_is_unzipped_once_atomically_and_listed(tmp_path, monkeypatch):
    from lmpipe.models import cache, derived, packaged

    monkeypatch.setenv("LMPIPE_HOME", str(tmp_path))
    assert not any(e.id.startswith("all-MiniLM") for e in cache.scan().entries)
    zip_path = packaged.packaged_zip()
    folder = packaged.ensure_unzipped(zip_path)
    assert (folder / "model.safetensors").is_file() and derived.conversion_info(folder)["source"] == str(zip_path)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary folder left
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert packaged.ensure_unzipped(zip_path) == folder and (folder / "config.json").stat().st_mtime_ns == stamp
    listed = [e for e in cache.scan().entries if e.path == folder]
    assert len(listed) == 1 and listed[0].kind == "converted"  # lm-cache-ls lists it, lm-cache-rm removes it
    assert listed[0].alias == "all-minilm-l6-v2"
