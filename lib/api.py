"""lmpipe as a Python library: load a model once, then stream typed events or take finished results.

`load()` resolves and loads a model the way every tool's --model does; `Model.generate()` yields
the generation loop's own events (a `Token` as each one comes, then a `Completion`), the ones
lm-generate, lm-serve and lm-dash consume; `Model.complete()` returns the finished `Result`,
with the same `stats` lm-generate writes. A prompt is a text (the model's chat template wraps it,
unless `raw`) or a list of chat messages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backends.generate import stats
from .backends.vision_prompts import ImageSource, vision_prompt
from .chat.prompts import PromptSettings, prompt_ids, with_template
from .engine.decoding import Decoding, settled
from .engine.generation import Completion, Event, Token, generate
from .engine.multimodal import ImagePrompt
from .engine.preparation import Preparation
from .engine.sampling import Sampling
from .models.loading import LoadedModel, ModelSettings, to_stderr
from .models.loading import load as load_model

Prompt = str | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Result:
    """A finished generation: its text, why it stopped, and the `stats` lm-generate writes."""

    text: str
    finish_reason: str  # "eos", "stop" or "length"
    stats: dict[str, Any]
    completion: Completion  # the loop's own event, with token ids and times


@dataclass(frozen=True)
class Encoded:
    """A prompt as the model reads it, checked against its context: its token ids and, for a
    vision-language model, its images (the chat's image_url parts) as its processor took them."""

    ids: list[int]
    image: ImagePrompt | None = None


class Model:
    """A loaded model, ready to generate; make one with lmpipe.load(). Every prompt and its
    settings go through the engine's one request preparation (lmpipe.engine.preparation), as
    lm-generate's and lm-serve's do."""

    def __init__(self, lm: LoadedModel, decoding: Decoding = Decoding(),
                 notify: Callable[[str], None] = to_stderr) -> None:
        """`notify`: where a word on the way it decodes goes (a fallback to transformers' forward)."""
        self.lm = lm
        self.decoding = settled(decoding, lm.model, notify)
        self.preparation = Preparation.of(lm)

    @property
    def name(self) -> str:
        return self.lm.ref.id

    @property
    def context(self) -> int | None:
        """The tokens a sequence may hold (--ctx-size, else the config's); None: the model does not say."""
        return self.preparation.context

    def encode(self, prompt: Prompt, system: str | None = None, raw: bool = False,
               template: PromptSettings | None = None) -> Encoded:
        """The prompt as lm-generate builds it for a record (`template`: --chat-template and
        --think, with `system` and `raw` in it); a prompt the context cannot hold is
        lmpipe.engine.preparation.ContextExceeded."""
        record = {"text": prompt} if isinstance(prompt, str) else {"messages": [dict(m) for m in prompt]}
        settings = template if template is not None else PromptSettings(system=system, raw=raw)
        image = None
        if self.lm.processor is not None:
            image = vision_prompt(record, self.lm.processor, with_template(settings, self.lm.processor), ImageSource())
            ids = image.ids
        else:
            ids = prompt_ids(record, self.lm.tokenizer, with_template(settings, self.lm.tokenizer))
        self.preparation.check(ids)
        return Encoded(ids, image)

    def prompt_ids(self, prompt: Prompt, system: str | None = None, raw: bool = False) -> list[int]:
        """The prompt's token ids, as lm-generate builds them for a record."""
        return self.encode(prompt, system, raw).ids

    def generate(self, prompt: Prompt | Encoded, *, system: str | None = None, raw: bool = False,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                 min_p: float = 0.0, repetition_penalty: float = 1.0, logit_bias: Mapping[int, float] | None = None,
                 seed: int | None = None, stop: Sequence[str] = (), top_probs: int = 0,
                 reasoning_budget: int | None = None) -> Iterator[Event]:
        """Yield a Token for each generated token, then one Completion. Greedy unless `temperature`;
        `logit_bias` maps token ids to biases (-100 to 100), as OpenAI's does. `prompt`: a text, a
        chat, or what encode() made of one (`system` and `raw` then already applied)."""
        encoded = prompt if isinstance(prompt, Encoded) else self.encode(prompt, system, raw)
        asked = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                         repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens, seed=seed,
                         stop=tuple(stop), logit_bias=tuple((logit_bias or {}).items()),
                         reasoning_budget=reasoning_budget)
        sampling = self.preparation.row(encoded.ids, self.preparation.sampling(asked))
        images = [encoded.image] if encoded.image is not None else []
        yield from generate(self.lm.model, self.lm.tokenizer, [encoded.ids], sampling, top_probs=top_probs,
                            device=self.lm.device, decoding=self.decoding, inputs=images,
                            processor=self.lm.processor)

    def complete(self, prompt: Prompt | Encoded, **settings: Any) -> Result:
        """The finished generation for `prompt`; takes generate()'s settings."""
        for event in self.generate(prompt, **settings):
            if isinstance(event, Completion):
                return Result(event.text, event.finish_reason, stats(event, None), event)
        raise RuntimeError("the generation loop ended without a Completion")


def load(model: str | None = None, *, device: str = "auto", dtype: str = "auto", attention: str | None = None,
         quantize: str | None = None, cache: str = "auto", compile: bool = False, ctx_size: int | None = None,
         rope_scaling: str | None = None, rope_factor: float | None = None, kernel: str | None = None,
         activations: str = "exact") -> Model:
    """Load a model as the tools' --model, --device, --dtype, --attention, --quantize, --cache,
    --compile, --ctx-size, --rope-scaling, --rope-factor, --kernel and --activations would (None:
    the embedded default, smollm2)."""
    settings = ModelSettings(model, device, dtype, attention, quantize, ctx_size=ctx_size, rope_scaling=rope_scaling,
                             rope_factor=rope_factor, kernel=kernel, activations=activations)
    return Model(load_model(settings), Decoding(cache, compile))


__all__ = ["Completion", "Encoded", "Event", "Model", "Result", "Token", "load"]
