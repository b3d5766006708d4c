"""lm-similar: the same top-k as a brute-force NumPy cosine over the same vectors."""

from __future__ import annotations

import base64

import numpy as np
import orjson
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.filters.similar import main


def similar(*args: str, input: bytes):
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, jsonl(result.stdout_bytes), result.stderr


def brute_force(vectors: np.ndarray, query: np.ndarray, top: int) -> list[int]:
    scores = vectors @ query / np.linalg.norm(vectors, axis=1) / np.linalg.norm(query)
    return [int(i) for i in np.argsort(-scores, kind="stable")[:top]], scores


def vector_records(vectors: np.ndarray) -> bytes:
    lines = []
    for n, v in enumerate(vectors):  # every third as lm-embed --format base64 writes it
        value = base64.b64encode(v.astype("<f4").tobytes()).decode() if n % 3 == 0 else [float(x) for x in v]
        lines.append(orjson.dumps({"id": n, "embedding": value}))
    return b"\n".join(lines) + b"\n"


def test_top_k_equals_numpy_cosine_for_a_vector_and_a_record():
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((300, 24)).astype(np.float32)
    query = rng.standard_normal(24).astype(np.float32)
    data = vector_records(vectors)
    code, out, _ = similar("--vector", orjson.dumps(query.tolist()).decode(), "--top", "7", input=data)
    expected, scores = brute_force(vectors.astype(np.float64), query.astype(np.float64), 7)
    assert code == 0 and [r["id"] for r in out] == expected
    assert np.allclose([r["score"] for r in out], scores[expected], atol=1e-6)
    b64 = base64.b64encode(query.astype("<f4").tobytes()).decode()
    assert [r["id"] for r in similar("--vector", b64, "--top", "7", input=data)[1]] == expected
    # A record as the query: its own line is skipped, its neighbours are numpy's next ones.
    query_record = {"id": 42, "embedding": vectors[42].tolist()}
    code, out, _ = similar("--record", orjson.dumps(query_record).decode(), "-n", "5", input=data)
    expected, _ = brute_force(vectors.astype(np.float64), vectors[42].astype(np.float64), 6)
    assert code == 0 and [r["id"] for r in out] == [i for i in expected if i != 42][:5]


def test_text_query_uses_the_records_model():
    from lmpipe.backends.embedding import Embedder, EmbedSettings
    from lmpipe.bin.embed import main as embed_main
    from lmpipe.models.loading import ModelSettings

    texts = ["The cat sat on the mat.", "A kitten sleeps on a rug.", "Stocks fell sharply today.",
             "The central bank raised rates.", "Bread is baked in an oven.", "A dog chased the cat."]
    lines = "".join(orjson.dumps({"id": n, "text": t}).decode() + "\n" for n, t in enumerate(texts))
    embedded = CliRunner().invoke(embed_main, [], input=lines, catch_exceptions=False).stdout_bytes
    code, out, _ = similar("a cat on a rug", "--top", "3", input=embedded)
    vectors = np.array([r["embedding"] for r in jsonl(embedded)], dtype=np.float64)
    query = Embedder(ModelSettings("all-minilm-l6-v2")).embed_texts(["a cat on a rug"], EmbedSettings())[0]
    expected, _ = brute_force(vectors, query.astype(np.float64), 3)
    assert code == 0 and [r["id"] for r in out] == expected and expected[0] in (0, 1)


def test_bad_vectors_are_error_records_and_queries_are_checked():
    data = (b'{"id": 1, "embedding": [1, 0]}\n{"id": 2, "embedding": [1, 0, 0]}\n{"id": 3}\n'
            b'{"id": 4, "embedding": [0, 1]}\n')
    code, out, err = similar("--vector", "[1, 0]", input=data)
    assert code == 1 and "2 records had no usable vector" in err
    errors = [r for r in out if "error" in r]
    assert [(r["line"], r["id"]) for r in errors] == [(2, 2), (3, 3)]
    assert [r["id"] for r in out if "error" not in r] == [1, 4]
    code, _, err = similar(input=data)
    assert code == 2 and "give one query" in err
    code, _, err = similar("text", "--vector", "[1]", input=data)
    assert code == 2 and "give only one query" in err
