"""Function calling: a record's `tools` (OpenAI's schema) become a grammar and, after decoding,
`tool_calls` whose arguments validate against the tool's parameters.

The call is the JSON object {"name": ..., "arguments": {...}}, enforced by llguidance:
--tool-choice required (some tool), NAME (that tool), auto (a call, or text that does not start
with "{"), none (plain text, tools not shown). A chat template that knows tools renders them its
own way; for one that does not, a system message lists them and asks for that JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from ..engine.constrain import JSON_OPTIONS, closed
from ..errors import RecordError, UsageError

CHOICES = ("auto", "required", "none")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def openai(self) -> dict[str, Any]:
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


def check_choice(choice: str) -> str:
    if not choice or not re.fullmatch(r"[A-Za-z0-9_.\-]+", choice):
        raise UsageError(f"--tool-choice {choice!r}: auto, required, none or a tool name")
    return choice


def parse_tools(record: dict[str, Any]) -> list[Tool]:
    """The record's `tools`, checked; [] when it has none."""
    raw = record.get("tools")
    if raw is None:
        return []
    if not isinstance(raw, list) or not raw:
        raise RecordError("`tools` must be a non-empty list of {type: function, function: {name, parameters}}")
    tools = []
    for t in raw:
        f = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise RecordError(f"bad tool {t!r}: need function.name")
        params = f.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise RecordError(f"tool {f['name']}: parameters must be a JSON schema object")
        tools.append(Tool(f["name"], str(f.get("description") or ""), params))
    return tools


def record_choice(record: dict[str, Any], default: str) -> str:
    """The record's own `tool_choice` (OpenAI's forms) or the command line's."""
    choice = record.get("tool_choice", default)
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    if not isinstance(choice, str):
        raise RecordError("`tool_choice` must be auto, required, none, a tool name or {function: {name}}")
    return choice


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    calls = [{"type": "object",
              "properties": {"name": {"const": t.name}, "arguments": closed(t.parameters)},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return calls[0] if len(calls) == 1 else {"anyOf": calls}


def tool_grammar(tools: list[Tool], choice: str) -> str | None:
    """The grammar the answer must follow (None: free text)."""
    from llguidance import LLMatcher

    if choice == "none" or not tools:
        return None
    if choice not in ("auto", "required"):
        tools = [t for t in tools if t.name == choice]
        if not tools:
            raise RecordError(f"tool_choice {choice!r} names no tool in `tools`")
    schema = call_schema(tools)
    if choice == "auto":
        schema = {**schema, "x-guidance": JSON_OPTIONS}
        grammar = LLMatcher.grammar_from_lark(
            f"start: call | TEXT\ncall: %json {json.dumps(schema)}\nTEXT: /[^{{][^\\x00]*/\n")
    else:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    error = LLMatcher.validate_grammar(grammar, None)
    if error and not error.startswith("WARNING"):
        raise RecordError(f"the tools' parameters cannot be compiled: {error.strip().splitlines()[0]}")
    return grammar


def template_knows_tools(template: Any) -> bool:
    """Whether a chat template (its source) renders `tools` itself."""
    return isinstance(template, str) and "tools" in template


def instructions(tools: list[Tool]) -> str:
    listed = "\n".join(json.dumps(t.openai()["function"]) for t in tools)
    return ("You can call these tools:\n" + listed + "\n"
            'To call one, answer with only a JSON object: {"name": "<tool name>", "arguments": {...}}. '
            "Otherwise answer in plain text.")


def with_instructions(messages: list[dict[str, Any]], tools: list[Tool]) -> list[dict[str, Any]]:
    text = instructions(tools)
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


_TAGGED = re.compile(r"<tool_call>\s*(\{.*\})\s*</tool_call>", re.S)


def parse_call(text: str, tools: list[Tool]) -> dict[str, Any] | None:
    """An OpenAI tool_calls entry when `text` calls one of `tools` with valid arguments, else None."""
    from jsonschema import ValidationError, validate

    stripped = text.strip()
    if (m := _TAGGED.search(stripped)) is not None:  # a template's own format (Hermes, Qwen)
        stripped = m.group(1)
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    tool = next((t for t in tools if t.name == value["name"]), None)
    arguments = value.get("arguments", value.get("parameters", {}))
    if tool is None or not isinstance(arguments, dict):
        return None
    try:
        validate(arguments, tool.parameters)
    except ValidationError as exc:
        raise RecordError(f"tool {tool.name}: arguments do not validate: {exc.message}") from None
    encoded = json.dumps(arguments, ensure_ascii=False)
    call_id = "call_" + hashlib.sha256(f"{tool.name}:{encoded}".encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": tool.name, "arguments": encoded}}
