"""lm-dash's models screen against the cache tools' JSONL (fake tools on PATH stand in for them)."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest
from dash_helpers import wait_for

from lmpipe.tui import cache_tools
from lmpipe.tui.app import create_app

MODELS = [
    {"id": "SmolLM2-135M-Instruct.Q4_1-747cb1f0195582d0", "kind": "converted", "size_bytes": 270_000_000,
     "revisions": 1, "files": 7, "last_accessed": "2026-11-20T10:00:00Z", "last_modified": "2026-11-20T10:00:00Z",
     "path": "/cache/a", "alias": "smollm2"},
    {"id": "org/big", "kind": "hub", "size_bytes": 2_500_000_000, "revisions": ["abc", "def"],
     "files": ["config.json", "model.safetensors"], "last_accessed": "2026-11-21T09:00:00",
     "last_modified": "2026-11-21T09:00:00", "path": "/cache/b"},
    {"id": "org/small", "kind": "hub", "size_bytes": 1_000, "revisions": 1, "files": 1,
     "last_accessed": None, "last_modified": None, "path": "/cache/c"},
]

SCRIPT = '''#!{python}
import json, sys, pathlib
state = pathlib.Path({state!r})
gone = set(state.read_text().split()) if state.exists() else set()
models = {models!r}
tool = pathlib.Path(sys.argv[0]).name
if tool == "lm-cache-ls":
    for m in models:
        if m["id"] not in gone:
            print(json.dumps(m))
elif tool == "lm-model-info":
    print(json.dumps({{"id": sys.argv[1], "architecture": "LlamaForCausalLM", "parameters": 134515008,
                       "layers": 30, "chat_template": True}}))
elif tool == "lm-cache-rm":
    assert "--yes" in sys.argv
    for line in sys.stdin:
        record = json.loads(line)
        assert record in models  # the lm-cache-ls record, as it was written
        gone.add(record["id"])
        print(json.dumps({{"id": record["id"], "deleted": True}}))
    state.write_text(" ".join(sorted(gone)))
'''


@pytest.fixture
def fake_tools(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    body = SCRIPT.format(python=sys.executable, state=str(tmp_path / "deleted"), models=MODELS)
    for name in ("lm-cache-ls", "lm-model-info", "lm-cache-rm"):
        path = folder / name
        path.write_text(body)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_models_sorted_with_total_details_and_confirmed_delete(fake_tools):
    async def scenario():
        app = create_app(screen="models")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: len(screen.models) == 3)
            ids = [m.id for m in screen.models]
            total = str(screen.query_one("#models-total").render())
            await pilot.press("i")
            await wait_for(pilot, lambda: "parameters" in str(screen.query_one("#model-info").render()))
            info = str(screen.query_one("#model-info").render())
            await pilot.press("d")
            await pilot.pause()
            await pilot.press("n")  # declined: nothing is deleted
            await pilot.pause()
            kept = (fake_tools / "deleted").exists()
            await pilot.press("d")
            await pilot.pause()
            await pilot.press("y")
            await wait_for(pilot, lambda: len(screen.models) == 2)
            return ids, total, info, kept, [m.id for m in screen.models]

    ids, total, info, kept, after = asyncio.run(scenario())
    assert ids == ["org/big", "SmolLM2-135M-Instruct.Q4_1-747cb1f0195582d0", "org/small"]
    assert total == "3 models · total 2.8 GB"
    assert "id: org/big" in info and "parameters: 134515008" in info
    assert not kept
    assert (fake_tools / "deleted").read_text() == "org/big"
    assert after == ["SmolLM2-135M-Instruct.Q4_1-747cb1f0195582d0", "org/small"]


def test_model_info_is_asked_for_a_name_it_resolves():
    from lmpipe.tui.cache_tools import CachedModel

    hub, converted, embedded = (CachedModel.from_record(r) for r in (
        MODELS[1], {**MODELS[0], "alias": None}, MODELS[0]))
    assert (hub.target, converted.target, embedded.target) == ("org/big", "/cache/a", "smollm2")


def test_a_missing_cache_tool_gives_a_clear_message(monkeypatch):
    monkeypatch.setattr(cache_tools, "LIST", "lm-cache-ls-not-installed")

    async def scenario():
        app = create_app(screen="models")
        async with app.run_test(size=(80, 24)) as pilot:
            status = app.screen.query_one("#models-total")
            await wait_for(pilot, lambda: "not installed" in str(status.render()))
            return str(status.render())

    assert asyncio.run(scenario()) == "lm-cache-ls-not-installed is not installed (it comes with lmpipe's cache tools)"


def test_the_real_lm_cache_ls_as_the_screen_shows_it(embedded):
    from conftest import jsonl, run_tool

    if not cache_tools.installed(cache_tools.LIST):
        pytest.skip("lm-cache-ls is not installed")
    listed = jsonl(run_tool("lm-cache-ls").stdout)

    async def scenario():
        app = create_app(screen="models")
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            await wait_for(pilot, lambda: str(screen.query_one("#models-total").render()).endswith("B"))
            return [m.id for m in screen.models], str(screen.query_one("#models-total").render())

    ids, total = asyncio.run(scenario())
    assert ids == [r["id"] for r in sorted(listed, key=lambda r: (-r["size_bytes"], r["id"]))]
    assert total == f"{len(listed)} models · total {cache_tools.human_size(sum(r['size_bytes'] for r in listed))}"


def test_the_screen_shows_what_a_running_lm_serve_holds(tiny_llama, long_llama):
    import httpx
    from serve_helpers import Server

    server = Server(tiny_llama, "-m", str(long_llama), "--api-key", "sk-dash")  # the screen sends its entry's token
    try:
        reply = httpx.post(server.url + "/v1/completions", timeout=120, headers={"Authorization": "Bearer sk-dash"},
                           json={"model": str(long_llama), "prompt": "Paris is", "max_tokens": 2})
        assert reply.status_code == 200

        async def scenario():
            app = create_app(screen="models")
            async with app.run_test(size=(120, 40)) as pilot:
                table = app.screen.query_one("#served-table")
                await wait_for(pilot, lambda: table.row_count >= 2)
                return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]

        rows = [r for r in asyncio.run(scenario()) if r[0] == server.url.removeprefix("http://")]
    finally:
        server.stop()
    assert [r[1] for r in rows] == [str(tiny_llama), str(long_llama)]
    assert rows[0][2] == "not loaded" and rows[1][2].startswith("loaded, unloads in ")
