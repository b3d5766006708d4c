"""/v1/embeddings through the openai client: the same vectors as lm-embed, OpenAI's input forms and errors."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl
from serve_helpers import JSON, Server

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "Ünïcödé and emoji 🎉.", "x",
         "Pipes connect small tools; each tool does one job well."]


@pytest.fixture(scope="module")
def server(tiny_llama):
    s = Server(tiny_llama)  # its generation model is the tiny Llama; embeddings load on first request
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def lm_embed():
    from lmpipe.bin.embed import main

    lines = "".join(orjson.dumps({"text": t}).decode() + "\n" for t in TEXTS)
    records = jsonl(CliRunner().invoke(main, [], input=lines, catch_exceptions=False).stdout_bytes)
    return np.array([r["embedding"] for r in records], dtype=np.float32)


def test_equals_lm_embed_as_floats_and_base64(client, lm_embed):
    floats = client.embeddings.create(model="all-minilm-l6-v2", input=TEXTS, encoding_format="float")
    assert [d.index for d in floats.data] == list(range(len(TEXTS)))
    # The server and this process run on other thread counts, which may order a sum differently.
    assert np.allclose(np.array([d.embedding for d in floats.data], dtype=np.float32), lm_embed, rtol=0, atol=1e-6)
    assert floats.model == "sentence-transformers/all-MiniLM-L6-v2" and floats.usage.prompt_tokens > 0
    # The client's default asks for base64 and decodes it itself.
    default = client.embeddings.create(model="all-minilm-l6-v2", input=TEXTS)
    assert np.array_equal(np.array([d.embedding for d in default.data], dtype=np.float32),
                          np.array([d.embedding for d in floats.data], dtype=np.float32))
    one = client.embeddings.create(model="all-minilm-l6-v2", input=TEXTS[1], encoding_format="float")
    # Alone, unpadded: the same vector up to float rounding (a batch pads the shorter texts).
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, lm_embed[1], atol=1e-6)


def test_token_ids_embed_as_their_text(client, lm_embed):
    from lmpipe.backends.embedding import Embedder
    from lmpipe.models.loading import ModelSettings

    ids = [Embedder(ModelSettings("all-minilm-l6-v2")).token_ids(t) for t in TEXTS[:2]]
    many = client.embeddings.create(model="all-minilm-l6-v2", input=ids, encoding_format="float")
    got = np.array([d.embedding for d in many.data], dtype=np.float32)
    assert np.allclose(got, lm_embed[:2], atol=1e-6)
    single = client.embeddings.create(model="all-minilm-l6-v2", input=ids[0], encoding_format="float")
    assert np.allclose(single.data[0].embedding, lm_embed[0], atol=1e-6)


def test_errors_in_openais_shape(client, server):
    import httpx
    from openai import BadRequestError, NotFoundError

    cases = [
        ({"model": "all-minilm-l6-v2", "input": "word " * 300}, "context_length_exceeded"),
        ({"model": "all-minilm-l6-v2", "input": "hi", "dimensions": 100}, "invalid_value"),
        ({"model": "all-minilm-l6-v2", "input": []}, "invalid_type"),
        ({"model": "all-minilm-l6-v2", "input": ""}, "invalid_value"),
        ({"model": "all-minilm-l6-v2", "input": "hi", "encoding_format": "int8"}, "invalid_value"),
    ]
    for body, code in cases:
        with pytest.raises(BadRequestError) as caught:
            client.embeddings.create(**body)
        assert caught.value.code == code, body
    with pytest.raises(NotFoundError) as missing:  # vLLM's 404 for a model it lacks
        client.embeddings.create(model="no/such-model", input="hi")
    assert missing.value.code == "model_not_found"
    raw = httpx.post(server.url + "/v1/embeddings", content=b"{not json", headers=JSON, timeout=30)
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    # Its own size is always allowed; the default model needs no `model`.
    same = httpx.post(server.url + "/v1/embeddings", json={"input": "hi", "dimensions": 384}, timeout=60)
    assert same.status_code == 200 and len(same.json()["data"][0]["embedding"]) == 384
    assert server.alive()
