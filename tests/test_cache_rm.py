"""lm-cache-rm: exact dry runs, shared blobs kept, ids piped from lm-cache-ls, nothing outside the cache."""

from __future__ import annotations

import hub_cache
import orjson
import pytest
from conftest import jsonl, run_tool
from hub_cache import SHARED, TINY_DEV, TINY_MAIN, disk_bytes


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return hub_cache.build(tmp_path_factory.mktemp("caches"))


@pytest.fixture()
def caches(built, tmp_path):
    return hub_cache.copy(built, tmp_path)


def everything(caches) -> dict:
    return {**disk_bytes(caches.hub), **disk_bytes(caches.home)}


def test_dry_run_deletes_nothing_and_reports_what_the_real_run_frees(caches):
    before = everything(caches)
    dry = run_tool("lm-cache-rm", "acme/tiny", "--dry-run", env=caches.env)
    assert dry.returncode == 0, dry.stderr
    [planned] = jsonl(dry.stdout)
    assert planned["dry_run"] is True and planned["deleted"] is False and planned["whole"] is True
    assert everything(caches) == before
    real = run_tool("lm-cache-rm", "acme/tiny", "--yes", env=caches.env)
    assert real.returncode == 0, real.stderr
    [done] = jsonl(real.stdout)
    after = everything(caches)
    freed = sum(before.values()) - sum(after.values())
    assert done["freed_bytes"] == planned["freed_bytes"] == freed
    assert freed >= len(SHARED) + len(TINY_DEV["extra.bin"])
    assert not (caches.hub / "models--acme--tiny").exists()
    assert (caches.hub / "models--acme--other").is_dir()


def test_deleting_one_of_two_revisions_keeps_the_shared_blob(caches):
    before = everything(caches)
    dry = jsonl(run_tool("lm-cache-rm", "acme/tiny", "-r", caches.dev[:7], "-n", env=caches.env).stdout)
    done = run_tool("lm-cache-rm", "acme/tiny", "--revision", caches.dev[:7], "--yes", env=caches.env)
    assert done.returncode == 0, done.stderr
    [record] = jsonl(done.stdout)
    assert record["revisions"] == [caches.dev] and record["whole"] is False
    repo = caches.hub / "models--acme--tiny"
    assert not (repo / "snapshots" / caches.dev).exists() and not (repo / "refs" / "dev").exists()
    for name, data in TINY_MAIN.items():  # main still reads, the shared weights included
        assert (repo / "snapshots" / caches.main / name).read_bytes() == data
    freed = sum(before.values()) - sum(everything(caches).values())
    assert record["freed_bytes"] == dry[0]["freed_bytes"] == freed
    # Only dev's own blobs went (its config and extra.bin) and its ref file.
    assert freed == len(TINY_DEV["config.json"]) + len(TINY_DEV["extra.bin"]) + len(caches.dev)


def test_ids_piped_from_lm_cache_ls_are_deleted(caches):
    listed = run_tool("lm-cache-ls", env=caches.env)
    big = b"".join(orjson.dumps(r) + b"\n" for r in jsonl(listed.stdout) if r["size_bytes"] > 30_000)
    done = run_tool("lm-cache-rm", "--yes", input=big, env=caches.env)
    assert done.returncode == 0, done.stderr
    assert sorted(r["id"] for r in jsonl(done.stdout)) == ["acme/other", "acme/tiny"]
    left = jsonl(run_tool("lm-cache-ls", env=caches.env).stdout)
    assert [r["id"] for r in left] == ["tiny.Q4_0-0123456789abcdef"]


def test_revisions_piped_from_lm_cache_ls_model(caches):
    revisions = jsonl(run_tool("lm-cache-ls", "--model", "acme/tiny", env=caches.env).stdout)
    dev = [r for r in revisions if r["refs"] == ["dev"]]
    done = run_tool("lm-cache-rm", "--yes", input=orjson.dumps(dev[0]), env=caches.env)
    assert done.returncode == 0, done.stderr
    assert jsonl(done.stdout)[0]["revisions"] == [caches.dev]
    assert [r["revision"] for r in jsonl(run_tool("lm-cache-ls", "--model", "acme/tiny", env=caches.env).stdout)] \
        == [caches.main]


def test_a_converted_model_is_deleted_by_id_and_a_half_done_folder_is_not_a_model(caches):
    folder = caches.home / "models" / "tiny.Q4_0-0123456789abcdef"
    done = run_tool("lm-cache-rm", "tiny.Q4_0-0123456789abcdef", "half-done", "--yes", env=caches.env)
    assert done.returncode == 1
    assert not folder.exists() and (caches.home / "models" / "half-done").is_dir()
    ok, failed = jsonl(done.stdout)
    info = b'{"source": "/somewhere/tiny.Q4_0.gguf", "sha256": "' + b"ab" * 32 + b'"}'
    assert ok["kind"] == "converted" and ok["freed_bytes"] == 20_000 + len(info)
    assert failed["error"] == "half-done is not in the cache"


def test_a_path_outside_the_cache_is_refused(caches, tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data").write_text("keep me")
    before = everything(caches)
    done = run_tool("lm-cache-rm", str(outside), "--yes", env=caches.env)
    assert done.returncode == 1 and outside.is_dir() and (outside / "data").read_text() == "keep me"
    assert b"outside the cache folders" in done.stderr
    # A record whose path lies outside is refused too, even with an id that is in the cache.
    sneaky = orjson.dumps({"id": "acme/tiny", "path": str(outside)})
    done = run_tool("lm-cache-rm", "--yes", input=sneaky, env=caches.env)
    assert done.returncode == 1 and outside.is_dir()
    assert "outside the cache folders" in jsonl(done.stdout)[0]["error"]
    # ... and the cache folder itself is not a model.
    root = run_tool("lm-cache-rm", str(caches.hub), "--yes", env=caches.env)
    assert root.returncode == 1
    assert everything(caches) == before


def test_in_a_pipe_it_deletes_only_with_yes(caches):
    before = everything(caches)
    done = run_tool("lm-cache-rm", "acme/tiny", env=caches.env)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr == (b"lm-cache-rm: error: in a pipe lm-cache-rm deletes only with --yes "
                           b"(--dry-run shows what it would free)\n")
    assert everything(caches) == before


def test_unknown_and_ambiguous_revisions(caches):
    done = run_tool("lm-cache-rm", "acme/tiny", "-r", "zzz", "-n", env=caches.env)
    assert done.returncode == 1
    assert jsonl(done.stdout)[0]["error"] == "acme/tiny has no cached revision 'zzz'"
    by_ref = run_tool("lm-cache-rm", "acme/tiny", "-r", "main", "-n", env=caches.env)
    assert jsonl(by_ref.stdout)[0]["revisions"] == [caches.main]


def on_a_terminal(args: list[str], answer: bytes, env: dict) -> tuple[int, str]:
    """Run lm-cache-rm with a pseudo-terminal as stdin, stdout and stderr; type `answer`."""
    import os
    import pty
    import select
    import subprocess

    from conftest import BIN

    master, slave = pty.openpty()
    proc = subprocess.Popen([str(BIN / "lm-cache-rm"), *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**os.environ, **env, "COLUMNS": "200"}, close_fds=True)
    os.close(slave)
    seen, typed = b"", False
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
        if not typed and b"[y/N]" in seen:
            os.write(master, answer)
            typed = True
    os.close(master)
    return proc.wait(timeout=60), seen.decode(errors="replace")


def test_on_a_terminal_it_asks_first(caches):
    before = everything(caches)
    code, screen = on_a_terminal(["acme/other"], b"n\n", caches.env)
    assert code == 0 and "Delete 1 model(s) from the cache? [y/N]" in screen and "nothing deleted" in screen
    assert everything(caches) == before
    code, screen = on_a_terminal(["acme/other"], b"y\n", caches.env)
    assert code == 0 and "freed" in screen
    assert not (caches.hub / "models--acme--other").exists()
