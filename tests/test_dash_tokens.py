"""lm-dash's tokens screen: boxes and counts as the tokenizer gives them; probabilities per token."""

from __future__ import annotations

import asyncio

import pytest
from dash_helpers import wait_for

from lmpipe.tui.app import create_app

TEXT = "def add(a, b): return a + b"


def test_tokens_counts_and_generation_probabilities(tiny_llama):
    from transformers import AutoTokenizer

    model = str(tiny_llama)
    expected = AutoTokenizer.from_pretrained(model)(TEXT)["input_ids"]

    async def scenario():
        app = create_app(model=model, screen="tokens")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            screen.query_one("#tok-max").value = "4"
            screen.query_one("#tok-text").text = TEXT
            counts = screen.query_one("#tok-counts")
            await wait_for(pilot, lambda: str(counts.render()).startswith(f"{len(expected)} tokens"))
            boxes = str(screen.query_one("#tok-boxes").render())
            await pilot.press("ctrl+g")
            await wait_for(pilot, lambda: screen.tokens)
            first = str(screen.query_one("#tok-alts").render())
            await pilot.press("down")
            await pilot.pause()
            second = str(screen.query_one("#tok-alts").render())
            return str(counts.render()), boxes, screen.tokens, screen.texts, first, second

    counts, boxes, tokens, texts, first, second = asyncio.run(scenario())
    assert counts.startswith(f"{len(expected)} tokens · ")
    pieces = boxes.split(" ")[:-1]  # a box per token (spaces inside a box show as ·)
    assert len(pieces) == len(expected)
    assert "".join(pieces).replace("·", " ").endswith(TEXT)
    assert 1 <= len(tokens) <= 4
    for t in tokens:
        assert len(t.top) == 5 and 0 < t.p <= 1
        assert t.top[0].id == t.id  # greedy: the chosen token is the likeliest
        assert [a.p for a in t.top] == sorted((a.p for a in t.top), reverse=True)
    # Each probability is the model's own softmax after the prompt and the tokens before it.
    import torch
    from transformers import AutoModelForCausalLM

    from lmpipe.chat.prompts import PromptSettings, prompt_ids

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    ids = prompt_ids({"text": TEXT}, AutoTokenizer.from_pretrained(model), PromptSettings())
    for i, t in enumerate(tokens):
        with torch.no_grad():
            probs = lm(torch.tensor([ids + [x.id for x in tokens[:i]]])).logits[0, -1].softmax(-1)
        assert t.p == pytest.approx(float(probs[t.id]), abs=1e-5)
        assert [a.p for a in t.top] == pytest.approx(probs.topk(5).values.tolist(), abs=1e-5)
        assert [a.p for a in t.top] == pytest.approx([float(probs[a.id]) for a in t.top], abs=1e-5)
    assert first.startswith("▶ ") and f"{tokens[0].top[0].p:.3f}" in first
    if len(tokens) > 1:
        assert f"{tokens[1].top[1].p:.3f}" in second  # stepping moved to the second token
