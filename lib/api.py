"""lmpipe as a Python library: load a model once, then stream typed events or take finished results.

`load()` resolves and loads a model the way every tool's --model does; `Model.generate()` yields
the generation loop's own events (a `Token` as each one comes, then a `Completion`), the ones
lm-generate, lm-serve and lm-dash consume; `Model.complete()` returns the finished `Result`,
with the same `stats` lm-generate writes. A prompt is a text (the model's chat template wraps it,
unless `raw`) or a list of chat messages.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .backends.generate import stats
from .chat.prompts import PromptSettings, prompt_ids
from .engine.decoding import Decoding, settled
from .engine.generation import Completion, Event, Token, check_prompt, generate
from .engine.sampling import Sampling
from .models.loading import LoadedModel, ModelSettings, context_length

Prompt = str | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Result:
    """A finished generation: its text, why it stopped, and the `stats` lm-generate writes."""

    text: str
    finish_reason: str  # "eos", "stop" or "length"
    stats: dict[str, Any]
    completion: Completion  # the loop's own event, with token ids and times


class Model:
    """A loaded model, ready to generate; make one with lmpipe.load()."""

    def __init__(self, lm: LoadedModel, decoding: Decoding = Decoding()):
        self.lm = lm
        self.decoding = settled(decoding, lm.model)
        self.context = context_length(lm)

    @property
    def name(self) -> str:
        return self.lm.ref.id

    def prompt_ids(self, prompt: Prompt, system: str | None = None, raw: bool = False) -> list[int]:
        """The prompt's token ids, as lm-generate builds them for a record."""
        record = {"text": prompt} if isinstance(prompt, str) else {"messages": [dict(m) for m in prompt]}
        ids = prompt_ids(record, self.lm.tokenizer, PromptSettings(system=system, raw=raw))
        check_prompt(ids, self.context)
        return ids

    def generate(self, prompt: Prompt, *, system: str | None = None, raw: bool = False, max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, logit_bias: Mapping[int, float] | None = None,
                 seed: int | None = None, stop: Sequence[str] = (), top_probs: int = 0) -> Iterator[Event]:
        """Yield a Token for each generated token, then one Completion. Greedy unless `temperature`;
        `logit_bias` maps token ids to biases (-100 to 100), as OpenAI's does."""
        ids = self.prompt_ids(prompt, system, raw)
        sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                            repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens, seed=seed,
                            stop=tuple(stop), logit_bias=tuple((logit_bias or {}).items())).with_seed()
        yield from generate(self.lm.model, self.lm.tokenizer, [ids], sampling, top_probs=top_probs,
                            device=self.lm.device, decoding=self.decoding, context=self.context)

    def complete(self, prompt: Prompt, **settings: Any) -> Result:
        """The finished generation for `prompt`; takes generate()'s settings."""
        for event in self.generate(prompt, **settings):
            if isinstance(event, Completion):
                return Result(event.text, event.finish_reason, stats(event, None), event)
        raise RuntimeError("the generation loop ended without a Completion")


def load(model: str | None = None, *, device: str = "auto", dtype: str = "auto", attention: str | None = None,
         quantize: str | None = None, cache: str = "auto", compile: bool = False, ctx_size: int | None = None,
         rope_scaling: str | None = None, rope_factor: float | None = None) -> Model:
    """Load a model as the tools' --model, --device, --dtype, --attention, --quantize, --cache,
    --compile, --ctx-size, --rope-scaling and --rope-factor would (None: the embedded default, smollm2)."""
    from .models.loading import load as load_model

    settings = ModelSettings(model, device, dtype, attention, quantize, ctx_size=ctx_size, rope_scaling=rope_scaling,
                             rope_factor=rope_factor)
    return Model(load_model(settings), Decoding(cache, compile))


__all__ = ["Completion", "Event", "Model", "Result", "Token", "load"]
