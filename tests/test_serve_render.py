"""lmpipe.serve.render: one renderer per endpoint, so a stream's chunks joined are its whole answer.

The app runs in-process (httpx's ASGI transport, as lm-batch runs it) on the tiny Llama; each
request is sent whole and streamed with the same seed, `n=2`, and the two answers must agree choice
by choice: text, order, finish_reason, the tokens whose log-probabilities they report, and usage.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

MESSAGES = [{"role": "user", "content": "The quick brown fox"}]


@pytest.fixture(scope="module")
def app(tiny_llama):
    from lmpipe.engine.scheduler import SchedulerSettings
    from lmpipe.models.loading import ModelSettings
    from lmpipe.serve.app import create_app
    from lmpipe.serve.roster import ModelRoster, RosterSettings

    roster = ModelRoster(RosterSettings((SchedulerSettings(model=ModelSettings(str(tiny_llama))),)), lambda m: None)
    yield create_app(roster)
    roster.close()


def both(app, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The whole answer, and the streamed one's chunks (the stream's end checked)."""
    async def post() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lm-serve") as client:
            whole = await client.post(path, json=body)
            streamed = await client.post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}})
            return whole, streamed

    whole, streamed = asyncio.run(post())
    assert whole.status_code == 200 and streamed.status_code == 200, (whole.text, streamed.text)
    events = streamed.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    return whole.json(), [orjson.loads(e.removeprefix("data: ")) for e in events[:-2]]


def joined(chunks: list[dict[str, Any]], chat: bool) -> dict[int, dict[str, Any]]:
    """Per choice, in the order the stream first shows them: its text, finish_reason and the
    tokens of its log-probabilities, joined across its chunks."""
    out: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            mine = out.setdefault(c["index"], {"text": "", "finish_reason": None, "tokens": [], "offsets": []})
            mine["text"] += (c["delta"].get("content") or "") if chat else c["text"]
            if c["finish_reason"] is not None:
                assert mine["finish_reason"] is None, "a choice finished twice"
                mine["finish_reason"] = c["finish_reason"]
            if c["logprobs"] is not None:
                if chat:
                    mine["tokens"] += [e["token"] for e in c["logprobs"]["content"]]
                else:
                    mine["tokens"] += c["logprobs"]["tokens"]
                    mine["offsets"] += c["logprobs"]["text_offset"]
    return out


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completion"])
def test_streamed_choices_joined_are_the_whole_answers_choices(app, tiny_llama, chat):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    asked: dict[str, Any] = {"messages": MESSAGES, "logprobs": True, "top_logprobs": 1} if chat else {
        "prompt": "Paris is", "logprobs": 1}
    whole, chunks = both(app, path, {"model": str(tiny_llama), "n": 2, "seed": 7, "max_tokens": 8, **asked})
    streamed = joined(chunks, chat)

    assert [c["index"] for c in whole["choices"]] == [0, 1]
    assert list(streamed) == [0, 1]
    for choice, mine in zip(whole["choices"], streamed.values(), strict=True):
        text = choice["message"]["content"] if chat else choice["text"]
        assert mine["text"] == text and text
        assert mine["finish_reason"] == choice["finish_reason"] in ("stop", "length")
        if chat:
            assert mine["tokens"] == [e["token"] for e in choice["logprobs"]["content"]]
        else:
            legacy = choice["logprobs"]
            assert (mine["tokens"], mine["offsets"]) == (legacy["tokens"], legacy["text_offset"])
    assert whole["choices"][0] != whole["choices"][1]  # two rows, each its own seed

    # the stream's last chunk has every choice's usage; each choice's own last chunk its timings and
    # lmpipe part, the first of which is the whole answer's
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert whole["usage"]["completion_tokens"] == sum(c["timings"]["predicted_n"] for c in chunks if "timings" in c)
    ends = {c["choices"][0]["index"]: c for c in chunks if "lmpipe" in c}
    assert sorted(ends) == [0, 1]
    assert ends[0]["lmpipe"]["sampling"] == whole["lmpipe"]["sampling"]
    assert ends[0]["timings"]["predicted_n"] == whole["timings"]["predicted_n"]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"] != whole["id"]
