"""lm-template: strict templates over record fields, agent TOML files into messages."""

from __future__ import annotations

import orjson
from click.testing import CliRunner
from conftest import jsonl, run_tool

from lmpipe.filters.template import main

AGENT = '''
[agent]
name = "Lingo"
role = """
You are an expert translator.
"""
task = "Translate the user's text from {{ source_language }} to {{ destination_language }}."
instructions = """
    Keep names as they are.
"""
rules = [
    """
    Respond only with the translation.
    """,
    "Never explain.",
]

[template]
source_language = "English"
destination_language = "Spanish"

[engine]
uri = "smollm2"

[run]
max_new_tokens = 64
'''

SYSTEM = ("You are an expert translator.\n\nYour name is Lingo.\n\nTranslate the user's text from English to {lang}."
          "\n\nKeep names as they are.\n\nRules:\n- Respond only with the translation.\n- Never explain.")


def template(*args: str, lines: list[str]):
    result = CliRunner().invoke(main, list(args), input="\n".join(lines) + "\n", catch_exceptions=False)
    return result, jsonl(result.stdout_bytes)


def test_plain_template_renders_record_fields_into_text():
    result, out = template("Translate to {{ lang }}: {{ text }}", lines=['{"text": "Pipes", "lang": "French", "k": 1}'])
    assert result.exit_code == 0 and result.stderr == ""
    assert out == [{"text": "Translate to French: Pipes", "lang": "French", "k": 1}]


def test_missing_variable_is_an_error_record_not_an_empty_string():
    lines = ['{"text": "a", "lang": "French"}', '{"text": "b"}', "plain line", '{"text": "c", "lang": "German"}']
    result, out = template("{{ lang }}: {{ text }}", "-o", "prompt", lines=lines)
    assert result.exit_code == 1
    assert [r.get("prompt") for r in out] == ["French: a", None, None, "German: c"]
    assert out[1] == {"text": "b", "error": "missing template variable: 'lang' is undefined", "line": 2}
    assert out[2]["error"].startswith("missing template variable") and out[2]["text"] == "plain line"
    assert "2 of 4 records failed" in result.stderr


def test_var_defaults_lose_to_record_fields():
    lines = ['{"text": "a"}', '{"text": "b", "lang": "German"}']
    _, out = template("{{ lang }}: {{ text }}", "--var", "lang=French", lines=lines)
    assert [r["text"] for r in out] == ["French: a", "German: b"]


def test_system_template_makes_messages():
    _, out = template("--system", "Answer in {{ lang }}.", "{{ text }}?", lines=['{"text": "Why", "lang": "Dutch"}'])
    assert out[0]["messages"] == [{"role": "system", "content": "Answer in Dutch."},
                                  {"role": "user", "content": "Why?"}]


def test_agent_file_gives_the_expected_messages(tmp_path):
    agent = tmp_path / "translator.toml"
    agent.write_text(AGENT)
    lines = ['{"text": "Hello there"}', '{"text": "Good night", "destination_language": "French"}', '{"body": "x"}']
    result, out = template("--agent", str(agent), lines=lines)
    assert result.exit_code == 1
    assert out[0]["messages"] == [{"role": "system", "content": SYSTEM.format(lang="Spanish")},
                                  {"role": "user", "content": "Hello there"}]
    assert out[1]["messages"][0]["content"] == SYSTEM.format(lang="French")
    assert out[0]["agent"] == {"file": str(agent), "model": "smollm2", "run": {"max_new_tokens": 64}}
    assert out[2]["error"] == "record has no 'text' field (choose one with --field)" and out[2]["line"] == 3


def test_agent_missing_variable_is_an_error_record(tmp_path):
    agent = tmp_path / "a.toml"
    agent.write_text('[agent]\ntask = "Write in {{ style }}."\n')
    _, out = template("--agent", str(agent), lines=['{"text": "x", "style": "haiku"}', '{"text": "y"}'])
    assert out[0]["messages"][0]["content"] == "You are a helpful assistant.\n\nWrite in haiku."
    assert out[1]["error"] == "missing template variable: 'style' is undefined"


def test_broken_toml_or_template_is_one_line_and_exit_2(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[agent\nrole = 'x'\n")
    result = run_tool("lm-template", "--agent", str(broken), input=b'{"text": "x"}\n')
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().count("\n") == 1 and "is not valid TOML" in result.stderr.decode()
    result, out = template("{{ text ", lines=['{"text": "x"}'])
    assert result.exit_code == 2 and out == [] and "syntax error on line 1" in result.stderr
    no_agent = tmp_path / "no-agent.toml"
    no_agent.write_text("[template]\nx = 1\n")
    result, _ = template("--agent", str(no_agent), lines=['{"text": "x"}'])
    assert result.exit_code == 2 and "has no [agent] table" in result.stderr


def test_agent_output_drives_lm_generate(tmp_path, tiny_llama):
    agent = tmp_path / "translator.toml"
    agent.write_text(AGENT)
    rendered = run_tool("lm-template", "--agent", str(agent), input=b"Hello there\n")
    assert rendered.returncode == 0
    generated = run_tool("lm-generate", "-m", str(tiny_llama), "-n", "4", input=rendered.stdout)
    assert generated.returncode == 0, generated.stderr
    [record] = jsonl(generated.stdout)
    assert record["messages"][1]["content"] == "Hello there" and "generated" in record
    assert record["stats"]["input_tokens"] > 20  # the system prompt reached the model
    # The agent asks for smollm2 and 64 tokens; -m and -n typed on the command line win, and say so.
    assert record["manifest"]["model"] == str(tiny_llama) and record["manifest"]["sampling"]["max_new_tokens"] == 4
    assert record["manifest"]["agent"] == {"file": str(agent), "applied": {}, "overridden": ["model", "max_new_tokens"]}


def test_starts_without_torch():
    probe = run_tool("python", "-c", "import sys, lmpipe.filters.template, lmpipe.tasks.template, "
                     "lmpipe.filters.stats, lmpipe.tasks.stats, lmpipe.filters.chunk, lmpipe.tasks.chunk; "
                     "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    assert probe.stdout.strip() == b"[]"


def test_output_and_resume_skip_what_is_done(tmp_path):
    out = tmp_path / "prompts.jsonl"
    lines = [orjson.dumps({"id": i, "text": f"t{i}"}).decode() for i in range(4)]
    result, printed = template("Q: {{ text }}", "--output", str(out), lines=lines[:2])
    assert result.exit_code == 0 and printed == []
    result, _ = template("Q: {{ text }}", "--output", str(out), "--resume", lines=lines)
    assert result.exit_code == 0
    assert [r["text"] for r in jsonl(out.read_bytes())] == ["Q: t0", "Q: t1", "Q: t2", "Q: t3"]


ESCAPE = '{{ cycler.__init__.__globals__.os.popen("echo escaped").read() }}'


def test_a_template_reaching_python_internals_is_an_error_record_not_code_run(tmp_path):
    result, out = template(ESCAPE, lines=['{"text": "x"}'])
    assert result.exit_code == 1 and "escaped" not in result.stdout
    assert out == [{"text": "x", "line": 1, "error": "template: unsafe template, refused: access to attribute "
                                                     "'__init__' of 'type' object is unsafe."}]
    agent = tmp_path / "shared.toml"
    agent.write_text(f"[agent]\ntask = '{ESCAPE}'\n")
    result, out = template("--agent", str(agent), lines=['{"text": "x"}'])
    assert result.exit_code == 1 and "escaped" not in result.stdout
    assert out[0]["error"].startswith(f"{agent} [agent] task: unsafe template, refused: access to attribute '__init__'")
