"""Structured output: a JSON schema, a regex or a fixed set of choices, enforced while decoding.

The grammar library is llguidance (the one llama.cpp and vLLM use). `Constraint` is compiled and
checked once, before any record is read; `GrammarProcessor` is a logits processor for the
generation loop: each step it feeds a row's last token to that row's matcher and masks the
tokens the grammar does not allow, so it works with any sampling, a policy of its row.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RecordError, UsageError

# Compact JSON: flexible whitespace lets a small model pad forever with newlines.
if TYPE_CHECKING:
    from llguidance import LLTokenizer
    from llguidance._lib import JsonCompileOptions
    from torch import Tensor

JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}


@dataclass(frozen=True)
class Constraint:
    """What the answer must look like; `grammar` is llguidance's grammar for it."""

    kind: str  # "json_schema", "regex" or "choice"
    grammar: str
    schema: dict[str, Any] | None = None
    choices: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""  # the option as given, for the manifest

    def manifest(self) -> dict[str, Any]:
        if self.kind == "json_schema":
            return {"json_schema": self.schema}
        if self.kind == "regex":
            return {"regex": self.source}
        return {"choice": list(self.choices)}


def load_schema(text: str) -> dict[str, Any]:
    """--json-schema takes a file name or the schema inline."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise UsageError(f"--json-schema {text}: no such file (or give the schema inline as JSON)")
        stripped = path.read_text()
    try:
        schema: dict[str, Any] = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--json-schema is not valid JSON: {exc}") from None
    return schema


def check_schema(schema: Any, what: str = "--json-schema") -> dict[str, Any]:
    """`schema` if it is a valid JSON Schema object; UsageError naming `what` otherwise."""
    if not isinstance(schema, dict):
        raise UsageError(f"{what} must be a JSON object")
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise UsageError(f"{what} is not a valid JSON Schema: {exc.message}") from None
    return schema


def _check(grammar: str, what: str) -> str:
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar, None)
    if error and not error.startswith("WARNING"):
        lines = [line.strip() for line in error.splitlines() if line.strip()]
        why = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"  # "regex parse error: ... not supported"
        raise UsageError(f"{what} cannot be compiled: {why}")
    return grammar


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` wherever an object lists its properties and
    says nothing of others (OpenAI's strict mode, vLLM's default): the grammar then writes only
    the declared properties; `additionalProperties: true` keeps an object open."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (closed(v) if k in ("items", "anyOf", "oneOf", "allOf", "prefixItems") else v) for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            out[key] = {name: closed(s) for name, s in schema[key].items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def json_constraint(schema: Any, what: str = "--json-schema", source: str = "") -> Constraint:
    """Answers that validate against `schema`, compiled and checked (UsageError naming `what`).

    Strict, as OpenAI's strict mode and vLLM: an object that lists its properties and says
    nothing of others gets only those (`closed`); the manifest keeps the schema as given."""
    schema = check_schema(schema, what)
    return Constraint("json_schema", _check(json_grammar(closed(schema), what), what), schema=schema, source=source)


def regex_constraint(regex: str, what: str = "--regex") -> Constraint:
    try:
        re.compile(regex)
    except re.error as exc:
        raise UsageError(f"{what} {regex!r}: {exc}") from None
    return Constraint("regex", _check(regex_grammar(regex), what), source=regex)


def choice_constraint(choices: Sequence[str], what: str = "--choice") -> Constraint:
    if any(not isinstance(c, str) or not c for c in choices):
        raise UsageError(f"{what} must be non-empty strings")
    return Constraint("choice", _check(choice_grammar(choices), what), choices=tuple(choices))


def json_grammar(schema: dict[str, Any], what: str = "--json-schema") -> str:
    from llguidance import LLMatcher

    try:
        return LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as exc:
        raise UsageError(f"{what} cannot be compiled: {exc}") from None


def regex_grammar(regex: str) -> str:
    """A full match of `regex`, with \\d meaning [0-9] as in Python's re.ASCII, not any Unicode digit."""
    from llguidance import LLMatcher, regex_to_lark

    return LLMatcher.grammar_from_lark(f"start: /{regex_to_lark(regex, 'd')}/")


def choice_grammar(choices: Sequence[str]) -> str:
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))


def parse_answer(constraint: Constraint, text: str, finish_reason: str) -> Any:
    """The answer's JSON value (json_schema; None for the others), checked against the constraint:
    RecordError when it is cut short or does not hold. In-process the grammar makes it hold; an
    answer from a server is checked by this same code, whether the server enforced it or not."""
    if constraint.kind == "choice":
        if text not in constraint.choices:
            raise RecordError(f"the answer is not one of the choices: {_shown(text)}")
        return None
    if constraint.kind == "regex":
        if re.fullmatch(constraint.source, text, re.ASCII) is None:  # \d as the grammar reads it
            why = " (the token limit was reached)" if finish_reason == "length" else ""
            raise RecordError(f"the answer does not match the regex{why}: {_shown(text)}")
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        why = "the token limit (--max-new-tokens) was reached" if finish_reason == "length" else "generation stopped"
        raise RecordError(f"the JSON answer is incomplete: {why} before it closed") from None
    from jsonschema import ValidationError, validate

    try:
        validate(value, constraint.schema or {})
    except ValidationError as exc:
        raise RecordError(f"the JSON answer does not validate: {exc.message}") from None
    return value


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def ll_tokenizer(tokenizer: Any, vocab_size: int, eos: Collection[int]) -> LLTokenizer:
    """llguidance's view of a transformers tokenizer (about a second to build: cache it)."""
    import llguidance.hf

    try:
        return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=sorted(eos))
    except ValueError as exc:
        raise UsageError(f"structured output needs a fast tokenizer: {exc}") from None


_LL_TOKENIZERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def model_ll_tokenizer(model: Any, tokenizer: Any) -> Any:
    """llguidance's tokenizer for a loaded model, built once per model and kept while it lives."""
    found = _LL_TOKENIZERS.get(model)
    if found is None:
        from .loop import eos_ids

        vocab = model.get_output_embeddings().out_features  # a quantized head has no .weight
        found = _LL_TOKENIZERS[model] = ll_tokenizer(tokenizer, vocab, eos_ids(model, tokenizer))
    return found


def row_constraints(model: Any, tokenizer: Any, grammar: str | None) -> tuple[Any, ...]:
    """The `constraints` of one row of the generation loop (lmpipe.engine.loop.Request): a fresh matcher
    for its grammar, or none for a free row."""
    if grammar is None:
        return ()
    return (GrammarProcessor(model_ll_tokenizer(model, tokenizer), [grammar]),)


class GrammarProcessor:
    """A logits processor holding one matcher per row; plug it first in the processor list."""

    def __init__(self, ll_tok: Any, grammars: Sequence[str | None]):
        """One grammar per row; None leaves that row free."""
        from llguidance import LLMatcher

        self.matchers = [LLMatcher(ll_tok, g, log_level=0) if g is not None else None for g in grammars]
        for m in self.matchers:
            if m is not None and m.is_error():
                raise UsageError(f"the grammar cannot be compiled: {m.get_error()}")
        self.seen: int | None = None  # history columns already fed to the matchers (first call: the prompts)
        self.done = [m is None for m in self.matchers]

    def __call__(self, history: Tensor, scores: Tensor) -> Tensor:
        import numpy as np
        import torch

        new = history[:, self.seen:].tolist() if self.seen is not None else [[] for _ in self.matchers]
        self.seen = history.shape[1]
        vocab = scores.shape[-1]
        words = (vocab + 31) // 32
        bitmask = np.zeros((len(self.matchers), words), dtype=np.int32)
        for r, m in enumerate(self.matchers):
            for token in new[r]:
                if self.done[r] or m is None:  # a row without a matcher is done from the start
                    break
                if m.is_stopped() or not m.consume_token(token):
                    self.done[r] = True  # EOS taken (or the row ended): later tokens are padding
            if self.done[r] or m is None or m.is_error():
                bitmask[r, :] = -1  # nothing to enforce any more
                continue
            m.unsafe_compute_mask_ptr(bitmask[r].ctypes.data, bitmask[r].nbytes)
        bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab]
        allowed = torch.from_numpy(bits.astype(bool)).to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))
