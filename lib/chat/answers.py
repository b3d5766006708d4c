"""What one record's answer must look like (a grammar, or none) and which fields it becomes.

Tools in the record (and a tool choice other than none) win over --json-schema/--regex/--choice;
a record without tools gets the command line's constraint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.constrain import Constraint, parse_answer
from ..errors import RecordError
from .reasoning import split_reasoning
from .tools import Tool, parse_call, parse_tools, record_choice, tool_grammar


@dataclass(frozen=True)
class Plan:
    grammar: str | None = None
    constraint: Constraint | None = None
    tools: list[Tool] = field(default_factory=list)  # offered to the model
    tool_choice: str = "none"


def plan_for(record: dict[str, Any], constraint: Constraint | None, tool_choice: str) -> Plan:
    tools = parse_tools(record)
    choice = record_choice(record, tool_choice) if tools else "none"
    if tools and choice != "none":
        return Plan(tool_grammar(tools, choice), None, tools, choice)
    return Plan(constraint.grammar if constraint else None, constraint)


def answer_fields(plan: Plan, text: str, finish_reason: str, prefix: str = "") -> dict[str, Any]:
    """The fields the answer adds to the record: the text, or `tool_calls`, or `json`, or `reasoning`."""
    if plan.tools:
        call = parse_call(text, plan.tools)
        if call is not None:
            return {"text": None, "tool_calls": [call], "finish_reason": "tool_calls"}
        if plan.tool_choice != "auto":
            why = "the token limit was reached" if finish_reason == "length" else "the answer is not a call"
            raise RecordError(f"tool_choice {plan.tool_choice} needs a tool call, but {why}")
        return {"text": prefix + text}
    if plan.constraint is not None:
        out: dict[str, Any] = {"text": prefix + text}
        value = parse_answer(plan.constraint, text, finish_reason)
        if plan.constraint.kind == "json_schema":
            out["json"] = value
        return out
    reasoning, answer = split_reasoning(text)
    out = {"text": prefix + answer}
    if reasoning is not None:
        out["reasoning"] = reasoning
    return out
