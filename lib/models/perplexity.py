"""Perplexity of a model on a text: the quality check that goes beside quantization's speed.

The text that ships with lmpipe is the opening of Jane Austen's Pride and Prejudice (1813,
public domain), in lmpipe/data/.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

SAMPLE = "pride-and-prejudice-ch1.txt"


def sample_text() -> str:
    return resources.files("lmpipe").joinpath("data", SAMPLE).read_text(encoding="utf-8")


def perplexity(model: Any, tokenizer: Any, text: str, window: int = 512) -> float:
    """exp(mean negative log-likelihood) of every token after the first, in windows of `window`."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids[0].to(model.device)
    total, count = 0.0, 0
    for start in range(0, max(1, len(ids) - 1), window):
        chunk = ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        logits = model(input_ids=chunk[None, :-1]).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum")
        total, count = total + float(nll), count + len(chunk) - 1
    return math.exp(total / count)
