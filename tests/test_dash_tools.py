"""lm-dash's view of the tools: discovered from entry points, forms from their click options."""

from __future__ import annotations

import shlex

import click
import pytest

from lmpipe.cli.commands import args_from_values, command, spec, tool_names, values_from_args
from lmpipe.errors import UsageError
from lmpipe.tui.pipeline import Pipeline, Stage, exit_code


def test_every_installed_lm_tool_is_found_but_the_dashboard_itself():
    names = tool_names()
    assert {"lm-generate", "lm-tokenize"} <= set(names)
    assert "lm-dash" not in names
    assert all(n.startswith("lm-") for n in names)


@pytest.mark.parametrize("tool", tool_names())
def test_the_form_has_every_option_of_the_tool(tool):
    cmd = command(tool)
    wanted = {p.name for p in cmd.params if not (isinstance(p, click.Option) and p.hidden)}
    assert {o.name for o in spec(tool).options} == wanted
    # Untouched, the form adds nothing to the command line.
    assert args_from_values(spec(tool), values_from_args(spec(tool), [])) == []


def test_form_values_round_trip_through_the_command_line():
    tool = spec("lm-generate")
    args = ["-n", "8", "--stop", "a b", "--stop", "###", "-t", "0.7", "--raw", "--device", "cpu", "a prompt"]
    values = values_from_args(tool, args)
    assert values["max_new_tokens"] == "8" and values["temperature"] == "0.7" and values["raw"] is True
    assert shlex.split(values["stop"]) == ["a b", "###"]
    again = args_from_values(tool, values)
    assert again == ["--device", "cpu", "--temperature", "0.7", "--max-new-tokens", "8",
                     "--stop", "a b", "--stop", "###", "--raw", "a prompt"]
    # click parses both forms to the same values
    ctx = lambda a: command("lm-generate").make_context("lm-generate", list(a)).params  # noqa: E731
    assert ctx(args) == ctx(again)


def test_a_bad_value_is_kept_as_typed_for_the_tool_to_report():
    tool = spec("lm-generate")
    assert args_from_values(tool, values_from_args(tool, ["--temperature", "hot"])) == ["--temperature", "hot"]


def test_pipeline_file_round_trip_and_shell_quoting(tmp_path):
    p = Pipeline((Stage("lm-generate", ("--system", "Be 'brief'", "-n", "4")), Stage("lm-tokenize")))
    assert p.shell() == "lm-generate --system 'Be '\"'\"'brief'\"'\"'' -n 4 | lm-tokenize"
    p.save(tmp_path / "p.json")
    assert Pipeline.load(tmp_path / "p.json") == p
    assert p.move(0, 1).stages == (p.stages[1], p.stages[0])
    assert p.move(1, 1) == p
    (tmp_path / "bad.json").write_text('{"stages": []}')
    with pytest.raises(UsageError, match="not a pipeline file"):
        Pipeline.load(tmp_path / "bad.json")
    (tmp_path / "evil.json").write_text('{"lmpipe_pipeline": 1, "stages": [{"tool": "rm", "args": ["-rf"]}]}')
    with pytest.raises(UsageError, match="lm-"):
        Pipeline.load(tmp_path / "evil.json")


def test_exit_code_is_pipefails():
    assert exit_code([0, 0]) == 0
    assert exit_code([2, 0]) == 2
    assert exit_code([1, 130]) == 130


def test_every_binding_is_a_command_in_the_palette():
    import asyncio

    from lmpipe.tui.app import create_app

    async def scenario():
        found = {}
        app = create_app()
        async with app.run_test(size=(80, 24)) as pilot:
            for mode in ("pipeline", "chat", "tokens", "models"):
                await app.switch_mode(mode)
                await pilot.pause()
                commands = {c.title for c in app.get_system_commands(app.screen)}
                bindings = {b.description for b in type(app.screen).BINDINGS} | {b.description for b in app.BINDINGS}
                found[mode] = bindings - commands - {"Quit"}
        return found

    assert asyncio.run(scenario()) == {"pipeline": set(), "chat": set(), "tokens": set(), "models": set()}


def test_reading_a_form_leaves_the_tools_own_help_alone():
    from click.testing import CliRunner

    values_from_args(spec("lm-tokenize"), ["--decode"])
    assert "-h, --help" in CliRunner().invoke(command("lm-tokenize"), ["--help"]).output
