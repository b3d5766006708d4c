"""lm-serve's structured output and function calling, through the real OpenAI client, on the embedded model.

`response_format` (json_schema, json_object), lmpipe's `regex`, `choice` and `prefix`, `tools` with
`tool_choice`, streamed and not, and lm-generate --server writing the records it writes in-process.
"""

from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import openai
import pytest
from conftest import jsonl, run_tool
from serve_helpers import Server
from test_constrain import SCHEMA

WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "maxLength": 20},
                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"]}
TOOLS = [{"type": "function",
          "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}}]
PARAMETERS = {"get_weather": WEATHER, "add": ADD}


def json_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def server(embedded):
    s = Server(embedded, "--max-batch", "8", "--preload")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def ask(client, model: str, prompt: str, **options):
    options.setdefault("max_tokens", 60)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                          temperature=0, **options)


def test_json_schema_answers_validate_in_a_batch_beside_a_free_one(server, client, model):
    prompts = ["Describe a dog as JSON.", "Describe a bird as JSON.", "Describe a cat that lives in Rome."]
    free = "What is the capital of France?"

    async def main():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=300) as c:
            calls = [c.chat.completions.create(model=model, messages=[{"role": "user", "content": p}], temperature=0,
                                               max_tokens=60, response_format=json_format(SCHEMA)) for p in prompts]
            calls.append(c.chat.completions.create(model=model, messages=[{"role": "user", "content": free}],
                                                   temperature=0, max_tokens=60))
            return await asyncio.gather(*calls)

    *structured, plain = asyncio.run(main())
    for answer in structured:
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content), SCHEMA)
    # The free row shared the batch (same sampling) and is what it is alone.
    assert plain.choices[0].message.content == ask(client, model, free).choices[0].message.content
    assert not plain.choices[0].message.content.startswith("{")


def test_json_object_answers_parse(client, model):
    answer = ask(client, model, "Describe a cat as JSON.", response_format={"type": "json_object"})
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content), dict)
    text = ask(client, model, "What is the capital of France?", max_tokens=8, response_format={"type": "text"})
    assert text.choices[0].message.content == ask(client, model, "What is the capital of France?", max_tokens=8
                                                  ).choices[0].message.content


@pytest.mark.parametrize("options, code", [
    ({"response_format": json_format({"type": "bogus"})}, "invalid_schema"),
    ({"response_format": json_format({"type": "string", "pattern": "(?<=a)b"})}, "invalid_schema"),
    ({"response_format": json_format({"$ref": "#/$defs/nowhere"})}, "invalid_schema"),
    ({"response_format": {"type": "yaml"}}, "invalid_response_format"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"regex": "a+"}}, "invalid_request"),
    ({"extra_body": {"regex": "(unclosed"}}, "invalid_schema"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nowhere"}}}, "invalid_tools"),
])
def test_what_cannot_be_compiled_is_a_400_and_the_server_carries_on(server, client, model, options, code):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, model, "hi", **options)
    assert caught.value.status_code == 400 and caught.value.code == code
    assert server.alive()


def test_regex_choice_and_prefix_extensions(client, model):
    regex = ask(client, model, "Give me a code.", extra_body={"regex": r"\d{3}-[A-Z]{2}"})
    assert re.fullmatch(r"[0-9]{3}-[A-Z]{2}", regex.choices[0].message.content)
    choice = ask(client, model, "Is the sky blue?", extra_body={"choice": ["yes", "no"], "prefix": "Answer: "})
    assert choice.choices[0].message.content in ("Answer: yes", "Answer: no")


def test_streaming_a_format_gives_the_same_text(client, model):
    options = {"response_format": json_format(SCHEMA), "extra_body": {"prefix": " "}}
    whole = ask(client, model, "Describe a dog as JSON.", **options).choices[0].message.content
    chunks = list(ask(client, model, "Describe a dog as JSON.", stream=True, **options))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert whole.startswith(" {") and chunks[-1].choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(whole), SCHEMA)


def test_tools_give_tool_calls_that_validate_and_none_gives_text(client, model):
    answer = ask(client, model, "What is the weather in Paris?", tools=TOOLS, tool_choice="required")
    (call,) = answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason == "tool_calls" and answer.choices[0].message.content is None
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), PARAMETERS[call.function.name])

    add = {"type": "function", "function": {"name": "add"}}
    named = ask(client, model, "Add 2 and 3.", tools=TOOLS, tool_choice=add)
    (call,) = named.choices[0].message.tool_calls
    assert call.function.name == "add"
    jsonschema.validate(json.loads(call.function.arguments), ADD)

    text = ask(client, model, "What is the weather in Paris?", tools=TOOLS, tool_choice="none", max_tokens=8)
    assert text.choices[0].message.tool_calls is None and text.choices[0].message.content
    assert text.choices[0].finish_reason in ("stop", "length")


def test_a_streamed_tool_call_is_the_same_call(client, model):
    options = {"tools": TOOLS, "tool_choice": "required"}
    (whole,) = ask(client, model, "What is the weather in Paris?", **options).choices[0].message.tool_calls
    chunks = list(ask(client, model, "What is the weather in Paris?", stream=True, **options))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].index == 0
    assert (deltas[0].id, deltas[0].function.name, deltas[0].function.arguments) == (
        whole.id, whole.function.name, whole.function.arguments)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def without_timings(records: list[dict]) -> list[dict]:
    for r in records:
        for key in ("ttft_s", "tokens_per_s", "total_s"):
            r.get("stats", {}).pop(key, None)
    return records


def test_lm_generate_through_the_server_writes_the_same_structured_records(server, embedded):
    records = [
        {"text": "Describe a dog as JSON.", "id": 1},
        {"text": "What is the weather in Paris?", "tools": TOOLS, "tool_choice": "required"},
        {"text": "Describe a cat as JSON.", "tools": TOOLS, "tool_choice": "none"},  # the schema holds
    ]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    args = ("-m", str(embedded), "-n", "60", "--seed", "3", "--json-schema", json.dumps(SCHEMA))
    local = run_tool("lm-generate", *args, "--no-server", input=lines)  # not the warm server
    remote = run_tool("lm-generate", *args, "--server", server.url, input=lines)
    assert local.returncode == remote.returncode == 0, remote.stderr
    ours, theirs = without_timings(jsonl(local.stdout)), without_timings(jsonl(remote.stdout))
    assert ours == theirs
    assert "json" in theirs[0] and "tool_calls" in theirs[1] and "json" in theirs[2]
    assert theirs[1]["generated"] is None and theirs[1]["stats"]["finish_reason"] == "tool_calls"

    # --choice and --prefix go as lmpipe's `choice` and `prefix`.
    remote = run_tool("lm-generate", "-n", "8", "--choice", "yes", "--choice", "no", "--prefix", "Answer: ",
                      "--server", server.url, input="Is the sky blue?\nIs fire cold?\n")
    assert remote.returncode == 0, remote.stderr
    for r in jsonl(remote.stdout):
        assert r["generated"] in ("Answer: yes", "Answer: no")
        assert r["manifest"]["choice"] == ["yes", "no"] and r["manifest"]["prefix"] == "Answer: "
