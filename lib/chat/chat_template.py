"""A model's chat template rendered with jinja2 as transformers renders it, without transformers.

transformers 5.x (utils/chat_template_utils.py: `_cached_compile_jinja_template`,
`render_jinja_template`, and `apply_chat_template` in tokenization_utils_base.py) compiles a
template in an ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loop controls
extension and a `{% generation %}` tag; it replaces the `tojson` filter (json.dumps, no HTML
escaping, ensure_ascii off) and adds `raise_exception`, `strftime_now`, a `dict` and a `namespace`
that refuse underscore names. The template sees the messages (keys holding None dropped, copied
to plain JSON types, reasoning aliased to `reasoning_content` and `thinking`), `tools`,
`documents`, `add_generation_prompt`, the tokenizer's named special tokens and any extra
variables. This module does the same; tests/test_chat_template.py compares real templates.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

from ..errors import RecordError

REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


@lru_cache(maxsize=16)
def compiled(source: str):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's part (transformers tracks
        its span for masks); rendering keeps the body as it is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # noqa: N805 - jinja's own signature trick, so namespace(self=...) works
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace.check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace.check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot store {name!r} on a namespace")

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: datetime.now().strftime(f),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env.from_string(source)


def plain(value: Any) -> Any:
    """What a template may see: JSON types only (transformers' `_plain_template_data`)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return f"<{type(value).__name__}>"


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return plain(message)


def choose(template: str | Mapping[str, str] | None, tools: Any) -> str:
    """The template to use: a model's only one, or of its named ones `tool_use` (with tools) or `default`."""
    if isinstance(template, Mapping):
        if tools is not None and "tool_use" in template:
            return template["tool_use"]
        if "default" in template:
            return template["default"]
        names = ", ".join(sorted(template))
        raise RecordError(f"the model has several chat templates and none named default ({names})")
    if template is None:
        raise RecordError("the model has no chat template")
    return template


def render_chat(template: str | Mapping[str, str] | None, messages: Sequence[Mapping[str, Any]], *,
                special_tokens: Mapping[str, str] | None = None, tools: list[Any] | None = None,
                documents: list[Any] | None = None, add_generation_prompt: bool = False, **variables: Any) -> str:
    """The chat as text, as transformers' apply_chat_template(..., tokenize=False) renders it.
    A template's own error (raise_exception, a bad variable) is a RecordError."""
    from jinja2 import TemplateError

    if not messages:
        raise RecordError("cannot render an empty chat")
    source = choose(template, tools)
    context = plain({**(special_tokens or {}), **variables})
    try:
        return compiled(source).render(messages=[_message(m) for m in messages], tools=plain(tools),
                                       documents=plain(documents), add_generation_prompt=add_generation_prompt,
                                       **context)
    except TemplateError as exc:
        raise RecordError(f"chat template: {exc.message or exc}") from None


def apply_chat_template(tokenizer: Any, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
    """render_chat with a tokenizer's template and named special tokens (JsonTokenizer or transformers')."""
    return render_chat(tokenizer.chat_template, messages, special_tokens=tokenizer.special_tokens_map, **kwargs)
