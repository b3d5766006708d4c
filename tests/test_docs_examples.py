"""Every example the README and the docs mark runnable runs, and prints what the page shows, in shape
(tests/docs_examples.py says how blocks are marked, run and compared)."""

from __future__ import annotations

import os
import shutil

import pytest
from docs_examples import ROOT, Block, Command, blocks, check, mismatch, pages
from serve_helpers import BIN, Server

BLOCKS = [block for page in pages() for block in blocks(page)]


def needs(block: Block) -> list[str]:
    """Commands a block runs that this machine may lack."""
    return [tool for tool in ("jq",) if any(tool in c.line for c in block.commands) and shutil.which(tool) is None]


@pytest.fixture(scope="module")
def env(embedded, tmp_path_factory) -> dict[str, str]:
    """A home of the examples' own (so lm-cache-ls lists only what they made) holding the embedded model,
    linked from the session's conversion, an empty hub cache, and the tools on PATH."""
    home = tmp_path_factory.mktemp("examples-home")
    shutil.copytree(embedded, home / "models" / embedded.name, copy_function=os.link)
    hub = tmp_path_factory.mktemp("examples-hub")
    return {**os.environ, "LMPIPE_HOME": str(home), "HF_HOME": str(hub), "HF_HUB_CACHE": str(hub / "hub"),
            "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def warm(env):
    """One lm-serve of the embedded model, which the examples' tools find by themselves: a model example
    costs a request, not a load."""
    server = Server("smollm2", "--preload", env=env)
    yield server
    server.stop()


def test_enough_examples_are_runnable():
    assert len(BLOCKS) >= 25, [b.name for b in BLOCKS]
    assert {b.path.name for b in BLOCKS} >= {"README.md", "lm-generate.md", "lm-tokenize.md", "records.md"}


@pytest.mark.parametrize("block", BLOCKS, ids=[b.name for b in BLOCKS])
def test_example(block, env, warm, tmp_path):
    if missing := needs(block):
        pytest.skip(f"no {', '.join(missing)} here")
    problems = check(block, env, tmp_path)
    assert not problems, "\n".join(problems)


SHOWN = ['{"text":"hi","ids":[1,2],"stats":{"ttft_s":0.5},"manifest":{...}}', "lm-x: 1 of 2 records failed", "1"]


@pytest.mark.parametrize("stdout, stderr, why", [
    ('{"text":"hi","ids":[1,2],"stats":{"ttft_s":0.5},"manifest":{"model":"m"}}\n1\n',
     "lm-x: 1 of 2 records failed (first: ...)\n", None),
    ('{"text":"yo","ids":[7],"stats":{"ttft_s":9.1},"manifest":{}}\n1\n', "lm-x: 1 of 2 records failed\n", None),
    ('{"text":"hi","tokens":[1,2],"stats":{"ttft_s":0.5},"manifest":{}}\n1\n', "lm-x: 1 of 2 records failed\n",
     "no output object"),
    ('{"text":"hi","ids":[1,2],"stats":{"ttft_s":0.5,"new":1},"manifest":{}}\n1\n', "lm-x: 1 of 2 records failed\n",
     "no output object"),
    ('{"text":"hi","ids":[1,2],"stats":{"ttft_s":0.5},"manifest":{}}\n' * 2 + "1\n", "lm-x: 1 of 2 records failed\n",
     "more than shown"),
    ('{"text":"hi","ids":[1,2],"stats":{"ttft_s":0.5},"manifest":{}}\n2\n', "lm-x: 1 of 2 records failed\n",
     "not printed"),
    ('{"text":"hi","ids":[1,2],"stats":{"ttft_s":0.5},"manifest":{}}\n1\n', "", "not printed"),
    ('{"text":"hi","ids":[1,2],"stats":{"ttft_s":0.5},"manifest":{}}\n1\nsurprise\n',
     "lm-x: 1 of 2 records failed\n", "not shown"),
], ids=["same", "other-values", "renamed-key", "nested-key", "extra-record", "exit-code", "no-summary",
        "extra-stdout"])
def test_a_changed_shape_is_caught(stdout, stderr, why):
    problem = mismatch(SHOWN, stdout, stderr)
    assert (problem is None) if why is None else (why in problem), problem


def test_a_failing_command_is_caught(tmp_path):
    block = Block(ROOT / "README.md", 1, "console", [Command("echo '{\"a\": 1}'; exit 3", ['{"a":1}'])])
    assert "exit 3" in check(block, dict(os.environ), tmp_path)[0]


def test_a_mark_before_another_fence_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- runnable -->\n```python\nprint(1)\n```\n")
    with pytest.raises(ValueError, match="must come just before"):
        blocks(page)


def test_cat_writes_the_file_a_block_shows(tmp_path):
    block = Block(ROOT / "README.md", 1, "console", [Command("cat in.txt", ["one", "two"]),
                                                      Command("wc -l < in.txt", ["2"])])
    assert check(block, dict(os.environ), tmp_path) == []
    assert (tmp_path / "in.txt").read_text() == "one\ntwo\n"
