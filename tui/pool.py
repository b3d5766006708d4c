"""In-process model work for the chat and tokens screens, on the library's own functions.

Models and tokenizers load once per name and are shared by the screens. Everything here runs
in worker threads and knows nothing of the interface: it reports through callbacks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from lmpipe.chat.prompts import PromptSettings
from lmpipe.models.loading import LoadedModel, ModelSettings


class ModelPool:
    """Loaded models and tokenizers, one of each per --model value. `defaults`: what every model
    loads with besides its name (lm-dash's --ctx-size and rope scaling)."""

    def __init__(self, defaults: ModelSettings = ModelSettings()) -> None:
        self.defaults = defaults
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._tokenizers: dict[str, Any] = {}

    def model(self, name: str) -> LoadedModel:
        from lmpipe.models.loading import load

        with self._lock:
            if name not in self._models:
                self._models[name] = load(replace(self.defaults, model=name), notify=lambda _msg: None)
            return self._models[name]

    def tokenizer(self, name: str) -> Any:
        """lm-tokenize's tokenizer for the model (tokenizer.json, no torch), so the Tokens screen
        shows exactly what lm-tokenize writes."""
        from lmpipe.models.fast_tokenizer import load_any
        from lmpipe.models.resolve import resolve

        with self._lock:
            if name not in self._tokenizers:
                self._tokenizers[name] = load_any(resolve(name), lambda _msg: None)
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


def chat_turn(engine: ModelPool, messages: list[dict[str, Any]], settings: ChatSettings,
              on_text: Callable[[str, int], object], cancelled: Callable[[], bool],
              on_prompt: Callable[[ContextFill], object] = lambda _fill: None) -> Reply:
    """Generate the assistant's reply to `messages`, reporting the prompt's fill of the context
    once it is tokenized, then the text as it streams. A prompt the context cannot hold is a
    RecordError, as lm-generate's; the answer stops where the context ends (finish_reason length)."""
    from lmpipe.backends.generate import stats
    from lmpipe.chat.prompts import prompt_ids, with_template
    from lmpipe.chat.reasoning import opens_thinking, split_reasoning
    from lmpipe.engine.events import Completion, Token
    from lmpipe.engine.generation import check_prompt, generate
    from lmpipe.engine.sampling import Sampling
    from lmpipe.models.loading import context_length
    from lmpipe.models.processors import image_token_count

    lm = engine.model(settings.model)
    context = context_length(lm)
    images: list[Any] = []
    if lm.processor is not None:  # a vision-language model: the messages' image_url parts are its images
        from lmpipe.backends.vision_prompts import ImageSource, vision_prompt

        template = with_template(settings.template, lm.processor)
        images = [vision_prompt({"messages": messages}, lm.processor, template, ImageSource())]
        ids = images[0].ids
    else:
        ids = prompt_ids({"messages": messages}, lm.tokenizer, with_template(settings.template, lm.tokenizer))
    check_prompt(ids, context)
    on_prompt(ContextFill(len(ids), context))
    sampling = Sampling(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens,
                        seed=settings.seed, reasoning_budget=settings.reasoning_budget).with_seed()
    opened = opens_thinking(lm.tokenizer.decode(ids[-8:]))
    text, got = "", []
    for event in generate(lm.model, lm.tokenizer, [ids], sampling, device=lm.device, inputs=images,
                          processor=lm.processor, context=context):
        if cancelled():
            break
        if isinstance(event, Token):
            text += event.text
            got.append(event.id)
            on_text(text, len(got))
        elif isinstance(event, Completion):
            reasoning, answer = split_reasoning(event.text, opened)
            return Reply(answer, reasoning, stats(event, None, image_token_count(lm.processor, ids)), event.ids)
    reasoning, answer = split_reasoning(text, opened)
    return Reply(answer, reasoning, {"output_tokens": len(got), "finish_reason": "cancelled"}, tuple(got))


def tokenize(engine: ModelPool, model: str, text: str) -> dict[str, Any]:
    """lm-tokenize's fields for `text`: ids, tokens, count, special, added, offsets."""
    from lmpipe.tasks.tokenize import encode

    return encode(engine.tokenizer(model), text, special=True)


def generate_with_probs(engine: ModelPool, model: str, text: str, max_new_tokens: int, top: int,
                        cancelled: Callable[[], bool]) -> list[Any]:
    """The tokens of a greedy generation for `text`, each with its probability and alternatives
    (within the model's context, as chat_turn's)."""
    from lmpipe.chat.prompts import PromptSettings, prompt_ids
    from lmpipe.engine.events import Token
    from lmpipe.engine.generation import check_prompt, generate
    from lmpipe.engine.sampling import Sampling
    from lmpipe.models.loading import context_length

    lm = engine.model(model)
    ids = prompt_ids({"text": text}, lm.tokenizer, PromptSettings())
    context = context_length(lm)
    check_prompt(ids, context)
    tokens = []
    for event in generate(lm.model, lm.tokenizer, [ids], Sampling(max_new_tokens=max_new_tokens),
                          top_probs=top, device=lm.device, context=context):
        if cancelled():
            break
        if isinstance(event, Token):
            tokens.append(event)
    return tokens
