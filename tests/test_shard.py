"""--shard I/N: every input line in exactly one shard; the shards together are the full run."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.bin.generate import main as generate_main
from lmpipe.errors import UsageError
from lmpipe.records.jsonl import Item
from lmpipe.records.shard import Shard


def test_parse_and_select():
    assert Shard.parse(None) == Shard(0, 1)
    assert Shard.parse("2/5") == Shard(2, 5)
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(UsageError, match="--shard"):
            Shard.parse(bad)
    items = [Item(n, {"n": n}) for n in (1, 2, 3, 5, 6, 7)]  # line 4 was blank
    assert [i.line for i in Shard(0, 3).select(items)] == [1, 7]
    assert [i.line for i in Shard(1, 3).select(items)] == [2, 5]
    assert [i.line for i in Shard(2, 3).select(items)] == [3, 6]


def test_union_of_shards_is_the_full_run(tiny_llama):
    data = "".join(json.dumps({"id": i, "text": f"Pipes number {i}"}) + "\n" for i in range(10))
    data += "not json but text\n{broken\n"

    def run(*extra: str) -> list[dict]:
        args = ["--model", str(tiny_llama), "-n", "6", "-b", "1", "--seed", "5", *extra]
        result = CliRunner().invoke(generate_main, args, input=data, catch_exceptions=False)
        return jsonl(result.stdout_bytes)

    def comparable(r: dict) -> str:
        return json.dumps({k: v for k, v in r.items() if k != "stats"}, sort_keys=True)

    full = run()
    shards = [run("--shard", f"{i}/3") for i in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert sorted(comparable(r) for s in shards for r in s) == sorted(comparable(r) for r in full)
    assert [r.get("id") for r in shards[1]] == [1, 4, 7, None]  # line 11: plain text
    assert shards[1][-1]["text"] == "not json but text" and "generated" in shards[1][-1]
    assert shards[2][-1]["line"] == 12 and "error" in shards[2][-1]  # the broken line, in its own shard
