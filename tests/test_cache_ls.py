"""lm-cache-ls on a cache built through the local test hub with the real huggingface_hub client."""

from __future__ import annotations

import hub_cache
import pytest
from click.testing import CliRunner
from conftest import jsonl, run_tool
from hub_cache import OTHER, SHARED, TINY_DEV, TINY_MAIN, disk_bytes

from lmpipe.terminal.tables import human_size


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    return hub_cache.build(tmp_path_factory.mktemp("caches"))


def test_one_record_per_model_sizes_match_the_disk(caches):
    done = run_tool("lm-cache-ls", env=caches.env)
    assert done.returncode == 0 and done.stderr == b""
    records = jsonl(done.stdout)
    assert [r["id"] for r in records] == ["acme/other", "acme/tiny", "tiny.Q4_0-0123456789abcdef"]
    assert [r["size_bytes"] for r in records] == sorted((r["size_bytes"] for r in records), reverse=True)
    by_id = {r["id"]: r for r in records}
    tiny, other, converted = by_id["acme/tiny"], by_id["acme/other"], by_id["tiny.Q4_0-0123456789abcdef"]
    blobs = disk_bytes(caches.hub / "models--acme--tiny" / "blobs")
    # The shared blob counts once: what is on disk, not the sum of the two snapshots.
    assert tiny["size_bytes"] == sum(blobs.values()) == len(SHARED) + len(TINY_MAIN["config.json"]) + \
        len(TINY_DEV["config.json"]) + len(TINY_DEV["extra.bin"])
    assert tiny["files"] == len(blobs) == 4 and tiny["revisions"] == 2 and tiny["kind"] == "hub"
    assert tiny["path"] == str(caches.hub / "models--acme--tiny")
    assert other["size_bytes"] == sum(map(len, OTHER.values())) and other["revisions"] == 1
    assert converted["kind"] == "converted" and converted["source"] == "/somewhere/tiny.Q4_0.gguf"
    assert converted["size_bytes"] == sum(disk_bytes(caches.home / "models" / converted["id"]).values())
    assert set(tiny) >= {"last_accessed", "last_modified"} and tiny["last_modified"].endswith("Z")


def test_model_gives_one_record_per_revision_with_refs(caches):
    done = run_tool("lm-cache-ls", "--model", "acme/tiny", "--model", "acme/other", env=caches.env)
    assert done.returncode == 0
    tiny = {r["revision"]: r for r in jsonl(done.stdout) if r["id"] == "acme/tiny"}
    assert set(tiny) == {caches.main, caches.dev}
    assert tiny[caches.main]["refs"] == ["main"] and tiny[caches.dev]["refs"] == ["dev"]
    assert tiny[caches.main]["size_bytes"] == sum(map(len, TINY_MAIN.values()))
    assert tiny[caches.dev]["size_bytes"] == sum(map(len, TINY_DEV.values()))
    assert tiny[caches.dev]["files"] == 3
    assert tiny[caches.dev]["path"] == str(caches.hub / "models--acme--tiny" / "snapshots" / caches.dev)
    missing = run_tool("lm-cache-ls", "--model", "acme/nothing", env=caches.env)
    assert missing.returncode == 1 and missing.stderr == b"lm-cache-ls: acme/nothing is not in the cache\n"


def test_the_terminal_table_agrees_with_the_records(caches, monkeypatch):
    from lmpipe.bin import cache_ls

    records = jsonl(run_tool("lm-cache-ls", env=caches.env).stdout)
    monkeypatch.setenv("LMPIPE_HOME", str(caches.home))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(cache_ls, "stdout_is_tty", lambda: True)
    table = CliRunner().invoke(cache_ls.main, ["--cache-dir", str(caches.hub)], catch_exceptions=False)
    assert table.exit_code == 0
    rows = [line.split() for line in table.output.splitlines()]
    for r in records:
        [row] = [row for row in rows if row and row[0] == r["id"]]
        assert row[1:6] == [r["kind"], *human_size(r["size_bytes"]).split(), str(r["revisions"]), str(r["files"])]
        assert row[-1] == r["path"]
    total = human_size(sum(r["size_bytes"] for r in records))
    assert rows[-1] == ["3", "models", *total.split()]  # the footer: count and total size
    as_json = CliRunner().invoke(cache_ls.main, ["--cache-dir", str(caches.hub), "--json"])
    assert jsonl(as_json.stdout_bytes) == records


def test_an_empty_or_missing_cache_lists_nothing(tmp_path):
    done = run_tool("lm-cache-ls", env={"HF_HUB_CACHE": str(tmp_path / "none"), "LMPIPE_HOME": str(tmp_path)})
    assert done.returncode == 0 and done.stdout == b"" and done.stderr == b""


def test_the_embedded_default_is_named(embedded):
    done = run_tool("lm-cache-ls", env={"HF_HUB_CACHE": str(embedded.parent / "no-hub")})
    [record] = [r for r in jsonl(done.stdout) if r["path"] == str(embedded)]
    assert record["kind"] == "converted" and record["alias"] == "smollm2" and record["id"] == embedded.name
