"""A bound on thinking: after `budget` tokens inside <think>, the think block is closed.

As llama.cpp's --reasoning-budget: the row's next tokens are forced to the close tag, then the
model answers freely. Thinking starts where the open tag is, in the prompt (templates that open
<think> for the model) or in what the model writes; the tags are found as token ids, the ids
the tokenizer gives them on their own (Qwen3's and DeepSeek's are single tokens). Budget 0 closes
the block at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

OPEN, CLOSE = "<think>", "</think>"


class ThinkingBudget:
    """A logits processor of one row (its history grows by one token a call): the close tag's
    next token is the only one allowed once `budget` thinking tokens were generated."""

    def __init__(self, tokenizer: Any, budget: int, prompt_len: int):
        self.open = list(tokenizer(OPEN, add_special_tokens=False)["input_ids"])
        self.close = list(tokenizer(CLOSE, add_special_tokens=False)["input_ids"])
        self.budget, self.prompt_len = budget, prompt_len
        self.seen = 0  # tokens of the history read so far
        self.tail: list[int] = []
        self.thinking = False
        self.thought = 0  # generated tokens since the block opened (the forced close tag's among them)

    def _read(self, token: int, generated: bool) -> None:
        self.tail = (self.tail + [token])[-max(len(self.open), len(self.close)):]
        if self.tail[-len(self.open):] == self.open:
            self.thinking, self.thought = True, 0
        elif self.tail[-len(self.close):] == self.close:
            self.thinking = False
        elif self.thinking and generated:
            self.thought += 1

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        history = input_ids[0, self.seen:].tolist()
        for i, token in enumerate(history):
            self._read(token, self.seen + i >= self.prompt_len)
        self.seen += len(history)
        if not self.thinking or self.thought < self.budget:
            return scores
        # Past the budget every generated token was forced: the close tag's, in order.
        out = scores.new_full(scores.shape, float("-inf"))
        out[:, self.close[self.thought - self.budget]] = 0.0
        return out
