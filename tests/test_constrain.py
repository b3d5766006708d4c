"""Structured output (lmpipe.engine.constrain): JSON schema, regex and choices enforced while decoding.

The tiny random Llama would never produce valid JSON or a matching string by chance, so when its
output validates the mask is doing the work; the embedded SmolLM2 runs the acceptance cases.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import jsonl

from lmpipe.bin.generate import main
from lmpipe.cli.settings import constraint_from_options
from lmpipe.errors import UsageError

SCHEMA = {
    "type": "object",
    "properties": {
        "animal": {"type": "string", "enum": ["cat", "dog", "bird"]},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
        "colors": {"type": "array", "items": {"type": "string", "enum": ["red", "brown", "white"]},
                   "minItems": 1, "maxItems": 2},
        "home": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                 "required": ["city"], "additionalProperties": False},
    },
    "required": ["animal", "legs", "colors", "home"],
    "additionalProperties": False,
}
ANIMALS = ["cat", "dog", "bird", "horse", "spider", "fish", "snake", "cow", "duck", "ant"]


def generate(*args: str, input: str):
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result, jsonl(result.stdout_bytes)


def lines(prompts: list[str]) -> str:
    return "".join(json.dumps({"text": p}) + "\n" for p in prompts)


def test_options_are_checked_and_compiled_before_anything_runs(tmp_path):
    assert constraint_from_options() is None
    assert constraint_from_options(choice=("yes", "no")).choices == ("yes", "no")
    with pytest.raises(UsageError, match="cannot be combined"):
        constraint_from_options(regex="a", choice=("b",))
    with pytest.raises(UsageError, match="not valid JSON"):
        constraint_from_options(json_schema="{nope")
    with pytest.raises(UsageError, match="no such file"):
        constraint_from_options(json_schema=str(tmp_path / "missing.json"))
    with pytest.raises(UsageError, match="not a valid JSON Schema"):
        constraint_from_options(json_schema='{"type": "no-such-type"}')
    with pytest.raises(UsageError, match="--regex"):
        constraint_from_options(regex="(unclosed")
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(SCHEMA))
    assert constraint_from_options(json_schema=str(schema_file)).schema == SCHEMA


def test_an_uncompilable_schema_is_one_line_before_the_model_loads(tmp_path):
    # The model does not exist: the schema error must come first, with exit code 2.
    result, _ = generate("--model", str(tmp_path / "none"), "--json-schema", '{"type": "bogus"}', input="hi\n")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("lm-generate: error: --json-schema")
    assert result.stdout == ""


def test_random_model_is_held_to_schema_regex_and_choice(tiny_llama):
    prompts = lines([f"Pipes and tools {i}" for i in range(20)])
    model = ["--model", str(tiny_llama), "-b", "20"]
    result, records = generate(*model, "--json-schema", json.dumps(SCHEMA), "-n", "120", input=prompts)
    assert result.exit_code == 0, result.stderr
    assert len(records) == 20
    for r in records:
        jsonschema.validate(r["json"], SCHEMA)
        assert json.loads(r["generated"]) == r["json"]
        assert r["manifest"]["json_schema"] == SCHEMA
    result, records = generate(*model, "--regex", r"\d{3}-[A-Z]{2}", "-n", "20", "-t", "1.5", "--seed", "3",
                               input=prompts)
    assert result.exit_code == 0, result.stderr
    assert all(re.fullmatch(r"[0-9]{3}-[A-Z]{2}", r["generated"]) for r in records), records
    result, records = generate(*model, "--choice", "yes", "--choice", "no", "-t", "1", "--seed", "1", input=prompts)
    assert {r["generated"] for r in records} <= {"yes", "no"}


def test_prefix_starts_the_answer(tiny_llama):
    _, records = generate("--model", str(tiny_llama), "--prefix", "Answer: ", "--choice", "yes", "--choice", "no",
                          input="Is it?\n")
    assert records[0]["generated"] in ("Answer: yes", "Answer: no")


def test_cut_short_json_is_an_error_record_with_the_text(tiny_llama):
    result, records = generate("--model", str(tiny_llama), "--json-schema", json.dumps(SCHEMA), "-n", "3",
                               input="hi\n")
    assert result.exit_code == 1
    assert "incomplete" in records[0]["error"] and records[0]["generated"].startswith('{"')


def test_batched_equals_unbatched_under_greedy(tiny_llama):
    prompts = lines([f"The quick brown fox {i}" for i in range(3)] + ["Paris is the capital of France."])
    for constraint in (["--json-schema", json.dumps(SCHEMA)], ["--regex", r"[a-z]{2,8}( [a-z]{2,8}){2}"]):
        first, one = generate("--model", str(tiny_llama), "-b", "1", "-n", "60", *constraint, input=prompts)
        second, four = generate("--model", str(tiny_llama), "-b", "4", "-n", "60", *constraint, input=prompts)
        assert (first.exit_code, second.exit_code, len(one), len(four)) == (0, 0, 4, 4), first.stderr + second.stderr
        assert [r["generated"] for r in one] == [r["generated"] for r in four]


def test_embedded_model_acceptance(embedded):
    """Issue 8, acceptance 1, with the real (embedded) model."""
    prompts = lines([f"Describe a {ANIMALS[i % 10]} as JSON ({i})." for i in range(20)])
    result, records = generate("--json-schema", json.dumps(SCHEMA), "-n", "60", "-b", "20", input=prompts)
    assert result.exit_code == 0, result.stderr
    assert len(records) == 20
    for r in records:
        jsonschema.validate(r["json"], SCHEMA)
    few = lines(["Give me a flight code.", "Is the sky blue?", "Is fire cold?"])
    _, batched = generate("--regex", r"\d{3}-[A-Z]{2}", "-n", "12", "-b", "3", input=few)
    _, single = generate("--regex", r"\d{3}-[A-Z]{2}", "-n", "12", "-b", "1", input=few)
    assert all(re.fullmatch(r"\d{3}-[A-Z]{2}", r["generated"], re.ASCII) for r in batched)
    assert [r["generated"] for r in batched] == [r["generated"] for r in single]
    _, choices = generate("--choice", "yes", "--choice", "no", "-b", "3", input=few)
    assert [r["generated"] in ("yes", "no") for r in choices] == [True] * 3


def test_schemas_are_strict_unless_opened(tiny_llama):
    """An object that lists its properties gets only those (OpenAI's strict mode, vLLM's default);
    `additionalProperties: true` opens it. The hot random model writes more keys whenever it may."""
    one = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"]}
    prompts = lines([f"Pipes and tools {i}" for i in range(12)])
    model = ["--model", str(tiny_llama), "-b", "12", "-t", "1.5", "--seed", "2", "-n", "40"]
    result, records = generate(*model, "--json-schema", json.dumps(one), input=prompts)
    assert result.exit_code == 0, result.stderr
    assert all(re.fullmatch(r'\{"a":[0-9]\}', r["generated"]) for r in records), records
    assert records[0]["manifest"]["json_schema"] == one  # as given
    _, records = generate(*model, "--json-schema", json.dumps({**one, "additionalProperties": True}), input=prompts)
    assert any(not re.fullmatch(r'\{"a":[0-9]\}', r.get("generated", "")) for r in records)
