"""Shared fixtures: isolated user folders, the embedded model converted once, tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each of pytest-xdist's workers (one per core) computes on one thread: two workers of two
    # threads each on two cores spin-wait on each other (an in-process greedy test: 11 s -> 92 s).
    # Set before torch is imported here, and inherited by every tool a test runs.
    os.environ["OMP_NUM_THREADS"] = "1"

from tiny_models import build_tiny_detr, build_tiny_llama, build_tiny_owlvit  # noqa: E402

BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def lmpipe_home(tmp_path_factory) -> Path:
    """LMPIPE_HOME for the session: LMPIPE_TEST_HOME keeps the converted embedded model between runs
    (developers); CI starts empty. Each pytest-xdist worker has a home of its own (two processes
    converting one model into one folder would race), and all of them share one build of lmpipe's
    kernels (its build holds an flock), which costs a minute of compiling per home."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if env := os.environ.get("LMPIPE_TEST_HOME"):
        root = Path(env)
        if worker is None:
            return root
        home = root / "workers" / worker
    else:
        home = tmp_path_factory.mktemp("lmpipe-home")
        # xdist's workers' temporary folders are siblings under one run's folder
        root = tmp_path_factory.getbasetemp().parent if worker else home
    if worker is not None:
        home.mkdir(parents=True, exist_ok=True)
        (root / "kernels").mkdir(mode=0o700, exist_ok=True)
        if not (home / "kernels").exists():
            (home / "kernels").symlink_to(root / "kernels")
    return home


@pytest.fixture(scope="session", autouse=True)
def isolated_env(lmpipe_home, tmp_path_factory):
    """Point lmpipe and the hub at test folders; no network."""
    hf_home = tmp_path_factory.mktemp("hf-home")
    saved = dict(os.environ)
    os.environ.update({
        "LMPIPE_HOME": str(lmpipe_home),
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hf_home / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # inductor's on-disk cache is not safe for two processes compiling at once (xdist's workers)
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path_factory.mktemp("inductor")),
    })
    for name in ("LMPIPE_MODEL", "LMPIPE_SERVER", "LMPIPE_NO_SERVER", "LMPIPE_DEBUG"):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def embedded(isolated_env) -> Path:
    """The embedded SmolLM2, converted into the test LMPIPE_HOME once per session."""
    from lmpipe.models.gguf import ensure_converted
    from lmpipe.models.resolve import embedded_gguf

    return ensure_converted(embedded_gguf())


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def long_llama(tiny_llama, tmp_path_factory) -> Path:
    """tiny_llama with room for tool instructions (its byte-level vocabulary spends many tokens)."""
    import json
    import shutil

    folder = tmp_path_factory.mktemp("long-llama") / "model"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return folder


@pytest.fixture(scope="session")
def tiny_llama_raw(tmp_path_factory) -> Path:
    """The same kind of model without a chat template."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-raw"), chat=False)


@pytest.fixture(scope="session")
def tiny_detr(tmp_path_factory) -> Path:
    """A tiny random DETR (ResNet backbone, no timm) with its image processor."""
    return build_tiny_detr(tmp_path_factory.mktemp("tiny-detr"))


@pytest.fixture(scope="session")
def tiny_owlvit(tmp_path_factory) -> Path:
    """A tiny random OWL-ViT with a trained CLIP-style tokenizer and its processor."""
    return build_tiny_owlvit(tmp_path_factory.mktemp("tiny-owlvit"))


def run_tool(tool: str, *args: str, input: bytes | str = b"", env: dict | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an installed console script as a shell pipeline would."""
    data = input.encode() if isinstance(input, str) else input
    return subprocess.run([str(BIN / tool), *args], input=data, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def jsonl(data: bytes) -> list[dict]:
    import orjson

    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_marian(tmp_path_factory) -> Path:
    from tiny_seq2seq import build_marian

    return build_marian(tmp_path_factory.mktemp("tiny-marian"))


@pytest.fixture(scope="session")
def tiny_mbart(tmp_path_factory) -> Path:
    from tiny_seq2seq import build_mbart50

    return build_mbart50(tmp_path_factory.mktemp("tiny-mbart"))


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> Path:
    from tiny_seq2seq import build_t5

    return build_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory) -> Path:
    from tiny_seq2seq import build_bart

    return build_bart(tmp_path_factory.mktemp("tiny-bart"))


@pytest.fixture(scope="session")
def tiny_nllb(tmp_path_factory) -> Path:
    from tiny_seq2seq import build_nllb

    return build_nllb(tmp_path_factory.mktemp("tiny-nllb"))


@pytest.fixture(scope="session")
def tiny_m2m100(tmp_path_factory) -> Path:
    from tiny_seq2seq import build_m2m100

    return build_m2m100(tmp_path_factory.mktemp("tiny-m2m100"))


# Vision-language models (tests/tiny_vlms.py): real configs and processors, random weights.
@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory) -> Path:
    from tiny_vlms import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"))


@pytest.fixture(scope="session")
def tiny_idefics3(tmp_path_factory) -> Path:
    from tiny_vlms import build_tiny_idefics3

    return build_tiny_idefics3(tmp_path_factory.mktemp("tiny-idefics3"))


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory) -> Path:
    from tiny_vlms import build_tiny_qwen2_vl

    return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Good images of different sizes and shapes (noise, so each one looks different to a model)."""
    from tiny_images import save_rgb

    folder = tmp_path_factory.mktemp("photos")
    return {"wide": save_rgb(folder / "wide.png", 40, 30, seed=1),
            "tall": save_rgb(folder / "tall.jpg", 20, 60, seed=2),
            "square": save_rgb(folder / "square.png", 64, 64, seed=3)}
