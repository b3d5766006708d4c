"""lm-serve's structured output and function calling, in OpenAI's terms.

A request's `response_format` ({type: text | json_object | json_schema}), lmpipe's extensions
`regex`, `choice` and `prefix`, and `tools` with `tool_choice` become the same answers.Plan that
lm-generate builds from its options and a record, with lmpipe.engine.constrain's grammars; a finished
answer that calls a tool becomes OpenAI's `tool_calls`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..chat.answers import Plan, plan_for
from ..chat.tools import parse_call
from ..engine.constrain import Constraint, choice_constraint, json_constraint, regex_constraint
from ..errors import RecordError, UsageError

FORMATS = ("text", "json_object", "json_schema")


class FormatError(Exception):
    """The request's format or tools cannot be served (a 400 with `code`)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Asked:
    """What the answer must look like, and the text it starts with."""

    plan: Plan = field(default_factory=Plan)
    prefix: str = ""


def response_format(body: dict[str, Any]) -> Constraint | None:
    """OpenAI's `response_format`: None for text, any JSON object, or JSON valid against a schema."""
    spec = body.get("response_format")
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") not in FORMATS:
        raise FormatError("`response_format` must be {\"type\": \"text\" | \"json_object\" | \"json_schema\"}",
                          "invalid_response_format")
    if spec["type"] == "text":
        return None
    if spec["type"] == "json_object":
        return json_constraint({"type": "object"}, "response_format")
    inner = spec.get("json_schema")
    if not isinstance(inner, dict) or not isinstance(inner.get("schema"), dict):
        raise FormatError("`response_format.json_schema.schema` must be a JSON Schema object",
                          "invalid_response_format")
    # Strict whether or not `strict` is set, as vLLM: additionalProperties: true opens an object.
    return json_constraint(inner["schema"], "response_format.json_schema")


def constraint_of(body: dict[str, Any]) -> Constraint | None:
    """The one constraint the request asks for: response_format, or lmpipe's `regex` or `choice`."""
    given = [name for name in ("regex", "choice") if body.get(name) is not None]
    try:
        constraint = response_format(body)
        if constraint is not None:
            given.insert(0, "response_format")
        if len(given) > 1:
            raise FormatError(f"{' and '.join(given)} cannot be combined; choose one", "invalid_request")
        if body.get("regex") is not None:
            if not isinstance(body["regex"], str) or not body["regex"]:
                raise FormatError("`regex` must be a non-empty string", "invalid_type")
            return regex_constraint(body["regex"], "regex")
        if body.get("choice") is not None:
            if not isinstance(body["choice"], list) or not body["choice"]:
                raise FormatError("`choice` must be a non-empty list of strings", "invalid_type")
            return choice_constraint(body["choice"], "choice")
        return constraint
    except UsageError as exc:  # a schema, regex or choice llguidance cannot compile
        raise FormatError(str(exc), "invalid_schema") from None


def asked(body: dict[str, Any]) -> Asked:
    """The request's Plan (tools win over a format unless tool_choice is none) and its `prefix`."""
    prefix = body.get("prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise FormatError("`prefix` must be a string", "invalid_type")
    constraint = constraint_of(body)
    wanted = {name: body[name] for name in ("tools", "tool_choice") if body.get(name) is not None}
    try:
        plan = plan_for(wanted, constraint, "auto")
    except RecordError as exc:
        raise FormatError(str(exc), "invalid_tools") from None
    return Asked(plan, prefix or "")


def tool_calls(asked: Asked, text: str) -> list[dict[str, Any]] | None:
    """OpenAI's `tool_calls` when the answer calls one of the request's tools, else None (text)."""
    if not asked.plan.tools:
        return None
    try:
        call = parse_call(text, asked.plan.tools)
    except RecordError:
        return None
    return [call] if call is not None else None
