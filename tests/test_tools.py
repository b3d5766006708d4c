"""Function calling (lmpipe.chat.tools): records with `tools` get `tool_calls` whose arguments validate."""

from __future__ import annotations

import json

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.bin.generate import main
from lmpipe.chat.prompts import PromptSettings, prompt_ids
from lmpipe.chat.tools import parse_call, parse_tools
from lmpipe.errors import RecordError

WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 10},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function",
          "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}


def generate(model, *args: str, records: list[dict]):
    data = "".join(json.dumps(r) + "\n" for r in records)
    result = CliRunner().invoke(main, ["--model", str(model), "-n", "60", *args], input=data, catch_exceptions=False)
    return result, jsonl(result.stdout_bytes)


def test_closed_schemas_write_only_declared_arguments():
    from lmpipe.chat.tools import closed

    open_schema = {"type": "object", "properties": {"city": {"type": "string"},
                                                    "where": {"type": "object", "properties": {"x": {}}}}}
    shut = closed(open_schema)
    assert shut["additionalProperties"] is False and shut["properties"]["where"]["additionalProperties"] is False
    assert closed({"type": "object", "properties": {}, "additionalProperties": True})["additionalProperties"] is True
    assert "additionalProperties" not in open_schema  # the record's own schema is left as it was


def test_parse_call():
    tools = parse_tools({"tools": TOOLS})
    call = parse_call('{"name": "add", "arguments": {"a": 1, "b": 2}}', tools)
    assert call["type"] == "function" and call["function"]["name"] == "add"
    assert json.loads(call["function"]["arguments"]) == {"a": 1, "b": 2} and call["id"].startswith("call_")
    tagged = parse_call('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', tools)
    assert tagged == call
    assert parse_call("It is sunny.", tools) is None
    assert parse_call('{"name": "nope", "arguments": {}}', tools) is None
    with pytest.raises(RecordError, match="do not validate"):
        parse_call('{"name": "add", "arguments": {"a": "one", "b": 2}}', tools)
    with pytest.raises(RecordError, match="tools"):
        parse_tools({"tools": "get_weather"})


def test_required_and_named_calls_validate(long_llama):
    records = [{"text": f"What is the weather in city {i}?", "tools": TOOLS} for i in range(4)]
    result, out = generate(long_llama, "--tool-choice", "required", "-b", "4", records=records)
    assert result.exit_code == 0, result.stderr
    for r in out:
        (call,) = r["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
        assert r["generated"] is None and r["stats"]["finish_reason"] == "tool_calls"
    # A record's own tool_choice (OpenAI's object form) names the tool.
    named = [{"text": "Add 2 and 3", "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "add"}}}]
    _, out = generate(long_llama, records=named)
    assert out[0]["tool_calls"][0]["function"]["name"] == "add"
    jsonschema.validate(json.loads(out[0]["tool_calls"][0]["function"]["arguments"]), ADD)


def test_none_gives_text_and_auto_gives_a_valid_call_or_text(long_llama):
    records = [{"text": f"Weather {i}?", "tools": TOOLS} for i in range(4)]
    result, out = generate(long_llama, "--tool-choice", "none", "-n", "8", records=records)
    assert result.exit_code == 0 and len(out) == 4, result.stderr
    assert all("tool_calls" not in r and isinstance(r["generated"], str) for r in out)
    result, out = generate(long_llama, "-t", "1", "--seed", "2", "-b", "4", records=records)
    assert result.exit_code == 0 and len(out) == 4, result.stderr
    for r in out:
        if "tool_calls" in r:
            call = r["tool_calls"][0]["function"]
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
        else:
            assert not r["generated"].lstrip().startswith("{")
    _, out = generate(long_llama, "--tool-choice", "nosuchtool", records=records[:1])
    assert "names no tool" in out[0]["error"]


def test_tools_go_through_a_template_that_knows_them(tiny_llama):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    record = {"text": "Weather?", "tools": TOOLS}
    tools = parse_tools(record)
    plain = tok.decode(prompt_ids(record, tok, PromptSettings(), tools))
    assert "You can call these tools" in plain and "get_weather" in plain
    tok.chat_template = ("{% if tools %}TOOLS {% for t in tools %}{{ t.function.name }} {% endfor %}{% endif %}"
                         "{% for m in messages %}{{ m.content }}{% endfor %}")
    native = tok.decode(prompt_ids(record, tok, PromptSettings(), tools))
    assert native.startswith("TOOLS get_weather add") and "You can call" not in native
