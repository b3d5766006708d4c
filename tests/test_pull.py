"""lm-pull against a local test hub: the real huggingface_hub client over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import socket

import orjson
import pytest
from conftest import jsonl, run_tool
from hub_server import TestHub

WEIGHTS = os.urandom(300_000)
FILES = {"config.json": b'{"model_type": "llama"}', "model.safetensors": WEIGHTS,
         "sub/tokenizer.json": b'{"version": "1.0"}'}


@pytest.fixture()
def hub():
    with TestHub() as hub:
        repo = hub.repo("acme/tiny")
        hub.main = repo.add_commit("one", FILES, ref="main")
        hub.dev = repo.add_commit("two", {**FILES, "config.json": b'{"model_type": "llama", "v": 2}'}, ref="dev")
        hub.repo("acme/gated").token = "hf_secret"
        hub.repo("acme/gated").add_commit("g", {"config.json": b"{}"}, ref="main")
        yield hub


@pytest.fixture()
def env(hub, tmp_path):
    return {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hub"),
            "HF_HOME": str(tmp_path / "hf")}


def snapshot(tmp_path, sha):
    return tmp_path / "hub" / "models--acme--tiny" / "snapshots" / sha


def no_partial_files(root) -> bool:
    return not [p for p in root.rglob("*") if p.name.endswith(".incomplete")]


def test_pulls_a_multi_file_repo_into_the_cache(hub, env, tmp_path):
    done = run_tool("lm-pull", "acme/tiny", env=env)
    assert done.returncode == 0, done.stderr
    [record] = jsonl(done.stdout)
    folder = snapshot(tmp_path, hub.main)
    assert record["revision"] == hub.main and record["path"] == str(folder)
    assert record["files"] == 3 and record["size_bytes"] == sum(map(len, FILES.values()))
    assert record["downloaded_bytes"] == sum(map(len, FILES.values()))
    for name, data in FILES.items():
        assert (folder / name).read_bytes() == data
    assert (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").read_text() == hub.main
    assert no_partial_files(tmp_path / "hub")
    # In a pipe, progress is JSON events on stderr, bytes counted up to the total.
    events = [orjson.loads(line) for line in done.stderr.splitlines() if line.startswith(b"{")]
    assert events[0]["event"] == "started" and events[-1]["event"] == "finished"
    assert events[-1]["done"] == sum(map(len, FILES.values())) and events[-1]["failed"] == 0
    assert any(e["event"] == "progress" and e["total"] == events[-1]["done"] for e in events)


def test_a_second_pull_downloads_nothing(hub, env):
    assert run_tool("lm-pull", "acme/tiny", env=env).returncode == 0
    hub.requests.clear()
    again = run_tool("lm-pull", "acme/tiny", "--progress", "none", env=env)
    assert again.returncode == 0 and again.stderr == b""
    assert jsonl(again.stdout)[0]["downloaded_bytes"] == 0
    assert not [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]


def test_resumes_when_the_server_drops_the_connection_midway(hub, env, tmp_path):
    # huggingface_hub reads bodies in 10 MiB chunks and resumes from the last chunk it wrote,
    # so the file is larger than that and the connection drops past the first chunk.
    big = os.urandom(12 * 1024 * 1024)
    sha = hub.repo("acme/big").add_commit("big", {"model.safetensors": big, "config.json": b"{}"}, ref="main")
    hub.drop_once["model.safetensors"] = 11 * 1024 * 1024
    done = run_tool("lm-pull", "acme/big", env=env)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "hub" / "models--acme--big" / "snapshots" / sha
    assert (folder / "model.safetensors").read_bytes() == big
    gets = [r for r in hub.requests if r[0] == "GET" and r[1].endswith("/model.safetensors")]
    assert len(gets) == 2 and gets[0][2] is None
    # The second request asks only for the rest: a resume, not a restart.
    start = int(gets[1][2].removeprefix("bytes=").removesuffix("-"))
    assert 0 < start < len(big)
    assert jsonl(done.stdout)[0]["size_bytes"] == len(big) + 2
    assert no_partial_files(tmp_path / "hub")


def test_a_failed_download_leaves_no_partial_file(hub, env, tmp_path):
    hub.drop_always.add("model.safetensors")  # more cuts than huggingface_hub's retries
    done = run_tool("lm-pull", "acme/tiny", "--progress", "none", env=env)
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode().startswith("lm-pull: error: download of acme/tiny failed: ")
    assert len(done.stderr.splitlines()) == 1
    blobs = tmp_path / "hub" / "models--acme--tiny" / "blobs"
    expected = sorted(len(FILES[f]) for f in FILES if f != "model.safetensors")
    assert sorted(p.stat().st_size for p in blobs.iterdir()) == expected
    assert no_partial_files(tmp_path / "hub")


def test_revision_include_and_exclude(hub, env, tmp_path):
    done = run_tool("lm-pull", "acme/tiny@dev", "--include", "*.json", "--exclude", "sub/*", env=env)
    assert done.returncode == 0, done.stderr
    [record] = jsonl(done.stdout)
    assert record["revision"] == hub.dev and record["ref"] == "dev" and record["files"] == 1
    assert sorted(p.name for p in snapshot(tmp_path, hub.dev).rglob("*")) == ["config.json"]
    by_option = run_tool("lm-pull", "acme/tiny", "--revision", hub.dev[:40], "--include", "sub/*", env=env)
    assert jsonl(by_option.stdout)[0]["revision"] == hub.dev


def test_token_comes_from_hf_token(hub, env):
    refused = run_tool("lm-pull", "acme/gated", env=env)
    assert refused.returncode == 2 and refused.stdout == b""
    assert refused.stderr.decode().splitlines()[-1] == \
        "lm-pull: error: acme/gated is gated or private: set HF_TOKEN to a token that has access"
    allowed = run_tool("lm-pull", "acme/gated", env={**env, "HF_TOKEN": "hf_secret"})
    assert allowed.returncode == 0, allowed.stderr


def test_offline_is_a_one_line_error(env):
    done = run_tool("lm-pull", "acme/tiny", "--progress", "none", env={**env, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.decode() == ("lm-pull: error: offline (HF_HUB_OFFLINE is set) and acme/tiny is not complete "
                                    "in the cache\n")


def test_unreachable_hub_and_unknown_repo(env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    down = run_tool("lm-pull", "acme/tiny", "--progress", "none", env={**env, "HF_ENDPOINT": closed})
    assert down.returncode == 1 and len(down.stderr.splitlines()) == 1
    assert down.stderr.startswith(f"lm-pull: error: cannot reach {closed} for acme/tiny".encode())
    missing = run_tool("lm-pull", "acme/nothing", "acme/tiny@nope", "--progress", "none", env=env)
    assert missing.returncode == 2
    assert missing.stderr.decode().splitlines() == [
        f"lm-pull: error: no repo acme/nothing on {env['HF_ENDPOINT']} (or it is private: set HF_TOKEN)",
        "lm-pull: error: acme/tiny has no revision 'nope'"]
    assert run_tool("lm-pull", "not a repo", env=env).returncode == 2


def test_repos_from_records_on_stdin(hub, env):
    done = run_tool("lm-pull", "--include", "config.json", input='{"id": "acme/tiny"}\n{"id": "acme/nothing"}\n',
                    env=env)
    assert done.returncode == 1
    ok, failed = jsonl(done.stdout)
    assert ok["revision"] == hub.main and ok["files"] == 1
    assert failed["line"] == 2 and "no repo acme/nothing" in failed["error"]


GGUFS = {"Tiny-Q4_K_M.gguf": b"GGUF" + os.urandom(20_000), "Tiny-Q8_0.gguf": b"GGUF" + os.urandom(30_000),
         "README.md": b"# tiny"}


def test_a_tag_pulls_only_the_gguf_of_that_type(hub, env, tmp_path):
    sha = hub.repo("acme/tiny-gguf").add_commit("g", GGUFS, ref="main")
    done = run_tool("lm-pull", "acme/tiny-gguf:q4_k_m", "--progress", "none", env=env)
    assert done.returncode == 0, done.stderr
    [record] = jsonl(done.stdout)
    folder = tmp_path / "hub" / "models--acme--tiny-gguf" / "snapshots" / sha
    assert record["file"] == str(folder / "Tiny-Q4_K_M.gguf") and record["files"] == 1
    assert record["downloaded_bytes"] == len(GGUFS["Tiny-Q4_K_M.gguf"])
    assert sorted(p.name for p in folder.iterdir()) == ["Tiny-Q4_K_M.gguf"]


def test_a_missing_tag_is_one_line_listing_the_tags_present(hub, env, tmp_path):
    hub.repo("acme/tiny-gguf").add_commit("g", GGUFS, ref="main")
    done = run_tool("lm-pull", "acme/tiny-gguf:Q5_K_S", "--progress", "none", env=env)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode() == \
        "lm-pull: error: acme/tiny-gguf on the hub has no Q5_K_S GGUF file; its tags: Q4_K_M, Q8_0\n"
    assert not (tmp_path / "hub" / "models--acme--tiny-gguf" / "blobs").exists()
