"""In-process model work for the chat and tokens screens, on the library's own functions.

Models and tokenizers load once per name and are shared by the screens. Everything here runs
in worker threads and knows nothing of the interface: it reports through callbacks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lmpipe.api import Model
from lmpipe.backends.generate import stats
from lmpipe.chat.prompts import PromptSettings
from lmpipe.chat.reasoning import opens_thinking, split_reasoning
from lmpipe.engine.events import Completion, Token
from lmpipe.models.fast_tokenizer import load_any
from lmpipe.models.loading import ModelSettings, load
from lmpipe.models.processors import image_token_count
from lmpipe.models.resolve import resolve
from lmpipe.tasks.tokenize import encode


def _quiet(_message: str) -> None:
    """The dashboard's screen is the terminal: loading says nothing on stderr."""


class ModelPool:
    """Loaded models (lmpipe.api.Model) and tokenizers, one of each per --model value. `defaults`:
    what every model loads with besides its name (lm-dash's --ctx-size and rope scaling)."""

    def __init__(self, defaults: ModelSettings = ModelSettings()) -> None:
        self.defaults = defaults
        self._lock = threading.Lock()
        self._models: dict[str, Model] = {}
        self._tokenizers: dict[str, Any] = {}

    def model(self, name: str) -> Model:
        with self._lock:
            if name not in self._models:
                self._models[name] = Model(load(replace(self.defaults, model=name), notify=_quiet), notify=_quiet)
            return self._models[name]

    def tokenizer(self, name: str) -> Any:
        """lm-tokenize's tokenizer for the model (tokenizer.json, no torch), so the Tokens screen
        shows exactly what lm-tokenize writes."""
        with self._lock:
            if name not in self._tokenizers:
                self._tokenizers[name] = load_any(resolve(name), _quiet)
            return self._tokenizers[name]


@dataclass(frozen=True)
class ChatSettings:
    model: str = "smollm2"
    system: str = ""
    temperature: float = 0.0
    max_new_tokens: int = 256
    seed: int | None = None
    template: PromptSettings = field(default_factory=PromptSettings)  # --chat-template, --think/--no-think
    reasoning_budget: int | None = None


@dataclass(frozen=True)
class Reply:
    text: str
    reasoning: str | None
    stats: dict[str, Any]
    ids: tuple[int, ...] = ()  # the reply's tokens, as generated


@dataclass(frozen=True)
class ContextFill:
    """How full a chat's context is: the tokens its sequence holds (the prompt, and the answer so
    far) out of the model's context (lmpipe.models.loading.context_length; None: unknown)."""

    used: int
    size: int | None


def chat_turn(pool: ModelPool, messages: list[dict[str, Any]], settings: ChatSettings,
              on_text: Callable[[str, int], object], cancelled: Callable[[], bool],
              on_prompt: Callable[[ContextFill], object] = lambda _fill: None) -> Reply:
    """Generate the assistant's reply to `messages`, reporting the prompt's fill of the context
    once it is tokenized, then the text as it streams. Through lmpipe.api.Model, as every front
    door's requests are prepared: a prompt the context cannot hold is lm-generate's RecordError;
    the answer stops where the context ends (finish_reason length)."""
    model = pool.model(settings.model)
    tokenizer = model.lm.tokenizer
    encoded = model.encode(messages, template=settings.template)
    on_prompt(ContextFill(len(encoded.ids), model.context))
    opened = opens_thinking(tokenizer.decode(encoded.ids[-8:]))
    text, got = "", []
    for event in model.generate(encoded, temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                                seed=settings.seed, reasoning_budget=settings.reasoning_budget):
        if cancelled():
            break
        if isinstance(event, Token):
            text += event.text
            got.append(event.id)
            on_text(text, len(got))
        elif isinstance(event, Completion):
            reasoning, answer = split_reasoning(event.text, opened)
            counted = image_token_count(model.lm.processor, encoded.ids)
            return Reply(answer, reasoning, stats(event, None, counted), event.ids)
    reasoning, answer = split_reasoning(text, opened)
    return Reply(answer, reasoning, {"output_tokens": len(got), "finish_reason": "cancelled"}, tuple(got))


def tokenize(pool: ModelPool, model: str, text: str) -> dict[str, Any]:
    """lm-tokenize's fields for `text`: ids, tokens, count, special, added, offsets."""
    return encode(pool.tokenizer(model), text, special=True)


def generate_with_probs(pool: ModelPool, model: str, text: str, max_new_tokens: int, top: int,
                        cancelled: Callable[[], bool]) -> list[Token]:
    """The tokens of a greedy generation for `text`, each with its probability and alternatives
    (within the model's context, as chat_turn's)."""
    tokens: list[Token] = []
    for event in pool.model(model).generate(text, max_new_tokens=max_new_tokens, top_probs=top):
        if cancelled():
            break
        if isinstance(event, Token):
            tokens.append(event)
    return tokens
