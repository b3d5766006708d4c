"""lm-dash's pipeline screen, driven by its pilot: build, run, compare with the shell, cancel, fail."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import orjson
import pytest
from conftest import jsonl
from dash_helpers import add_stage, alive, burst, shell, stable, wait_for
from textual import events

from lmpipe.tui.app import create_app
from lmpipe.tui.messages import OutputLine
from lmpipe.tui.pipeline import Pipeline, Stage
from lmpipe.tui.widgets.stage_meter import StageMeter

INPUT = "Hello there\nWhat is a pipe?\n{\"text\": \"Name a color\", \"id\": 3}\n"


@pytest.fixture(autouse=True)
def venv_on_path(monkeypatch):
    import sys

    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def test_build_run_and_compare_with_the_shell(embedded):
    # The pipeline: lm-template | lm-generate on the embedded SmolLM2.
    template = "Answer in one short sentence: {{ text }}"

    async def scenario():
        app = create_app(input_text=INPUT)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.pipeline_screen
            await add_stage(pilot, "lm-template", {"template": template})
            await add_stage(pilot, "lm-generate", {"max_new_tokens": "5", "seed": "1"})
            assert screen.pipeline == Pipeline((
                Stage("lm-template", (template,)),
                Stage("lm-generate", ("--seed", "1", "--max-new-tokens", "5")),
            ))
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen.sub_title.startswith("finished"))
            meters = [s for s in screen.run_.snapshots()]
            shown = list(screen.query_one("#output").lines_out)
            return screen.pipeline, screen.last_output, meters, shown, screen.last_codes

    pipeline, output, meters, shown, codes = asyncio.run(scenario())
    assert codes == (0, 0)
    records = jsonl(output)
    assert [r["text"] for r in records] == [template.replace("{{ text }}", t)
                                            for t in ("Hello there", "What is a pipe?", "Name a color")]
    assert records[2]["id"] == 3
    assert all(r["generated"] and r["manifest"]["kind"] == "embedded" for r in records)
    assert [jsonl(line)[0] for line in shown] == records  # the output panel holds the records
    assert [(m.records_in, m.records_out, m.errors) for m in meters] == [(3, 3, 0), (3, 3, 0)]
    assert meters[1].tokens > 0  # tokens were streamed and counted, then kept out of the records
    # The meters read the tools' progress events (lmpipe.records.progress JSON on stderr).
    assert [(m.progress or {}).get("event") for m in meters] == ["finished", "finished"]
    assert [m.progress["done"] for m in meters] == [3, 3]

    # The command line the screen shows, run by a shell, prints the same records.
    by_shell = shell(pipeline.shell(), INPUT.encode())
    assert by_shell.returncode == 0, by_shell.stderr
    assert stable(jsonl(by_shell.stdout)) == stable(records)


def test_cancel_mid_run_leaves_no_child_alive(tiny_llama):
    model = str(tiny_llama)
    pipeline = Pipeline((Stage("lm-tokenize", ("--model", model)),
                         Stage("lm-generate", ("--model", model, "--max-new-tokens", "200"))))
    lines = "".join(f"record {i}\n" for i in range(50))

    async def scenario():
        app = create_app(pipeline=pipeline, input_text=lines)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.pipeline_screen
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen.run_ is not None and screen.run_.snapshots()[1].records_in > 0)
            pids = [p.pid for p in screen.run_.procs]
            assert alive(pids[-1])  # lm-generate works on (lm-tokenize, torch-free, may be done already)
            # The interface answers keys while the stages work.
            stages = screen.query_one("#stages")
            await pilot.press("down")
            await pilot.pause()
            assert stages.index == 1 and screen.running
            await pilot.press("escape")
            await wait_for(pilot, lambda: screen.sub_title == "cancelled")
            return pids, screen.run_.procs

    pids, procs = asyncio.run(scenario())
    assert len(pids) == 2
    assert all(p.returncode is not None for p in procs)
    assert not any(alive(pid) for pid in pids)


def test_a_bad_option_shows_its_error_and_the_app_stays_responsive():
    async def scenario():
        app = create_app(input_text="hi\n")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.pipeline_screen
            await add_stage(pilot, "lm-generate", {"temperature": "abc"})
            assert screen.pipeline.stages[0].args == ("--temperature", "abc")
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen.sub_title.startswith("finished"))
            meter = screen.query_one(StageMeter)
            error = str(meter.query_one(".meter-error").render())
            # Still answering keys: a dialog opens and closes, the stage can be removed.
            await pilot.press("ctrl+n")
            await pilot.pause()
            opened = type(app.screen).__name__
            await pilot.press("escape")
            await pilot.pause()
            await pilot.press("delete")
            await pilot.pause()
            return screen.last_codes, error, meter.has_class("failed"), opened, screen.pipeline

    codes, error, failed, opened, pipeline = asyncio.run(scenario())
    assert codes == (2,)
    assert "'abc' is not a valid float" in error
    assert failed
    assert opened == "PickTool"
    assert pipeline == Pipeline()


def test_saved_pipeline_reloads_identical_and_runs_headless(tmp_path, tiny_llama):
    from conftest import run_tool

    model = str(tiny_llama)
    saved = tmp_path / "tok.json"
    records = tmp_path / "in.jsonl"
    records.write_text('{"text": "from a file"}\n')

    async def build_and_save():
        app = create_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await add_stage(pilot, "lm-tokenize", {"model": model, "no_special": True})
            await add_stage(pilot, "lm-tokenize", {"model": model, "decode": True, "out": "back"})
            await pilot.press("ctrl+s")
            await pilot.pause()
            app.screen.query_one("#path").value = str(saved)
            await pilot.press("enter")
            await pilot.pause()
            # The input can come from a file too.
            await pilot.press("ctrl+f")
            await pilot.pause()
            app.screen.query_one("#path").value = str(records)
            await pilot.press("enter")
            await pilot.pause()
            assert app.pipeline_screen.query_one("#input").text == records.read_text()
            return app.pipeline_screen.pipeline

    async def load(path):
        app = create_app()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+o")
            await pilot.pause()
            app.screen.query_one("#path").value = str(path)
            await pilot.press("enter")
            await pilot.pause()
            return app.pipeline_screen.pipeline

    built = asyncio.run(build_and_save())
    assert built.shell() == (f"lm-tokenize --model {model} --no-special | "
                             f"lm-tokenize --model {model} --out back --decode")
    assert asyncio.run(load(saved)) == built == Pipeline.load(saved)

    data = "a pipe\n{\"text\": \"two pipes\"}\n"
    headless = run_tool("lm-dash", "--run", str(saved), input=data)
    assert headless.returncode == 0, headless.stderr
    expected = [("a pipe", "a pipe"), ("two pipes", "two pipes")]
    assert [(r["text"], r["back"]) for r in jsonl(headless.stdout)] == expected
    by_shell = shell(built.shell(), data.encode())
    assert by_shell.stdout == headless.stdout

    # The tools' exit codes come through: a usage error in a stage is 2, as in the shell.
    Pipeline(built.stages + (Stage("lm-tokenize", ("--bogus",)),)).save(tmp_path / "bad.json")
    failing = run_tool("lm-dash", "--run", str(tmp_path / "bad.json"), input=data)
    assert failing.returncode == 2
    assert b"No such option '--bogus'" in failing.stderr


def bound_letters() -> set[str]:
    """Every single printable key bound anywhere in lm-dash (screens, dialogs, the app), and the
    letters the pipeline screen once bound (a, e, x)."""
    import importlib

    from textual.app import App
    from textual.binding import Binding
    from textual.screen import Screen

    letters = set("aex")
    for name in ("app", "screens.pipeline", "screens.chat", "screens.tokens", "screens.models",
                 "screens.dialogs", "screens.stage_form"):
        module = importlib.import_module(f"lmpipe.tui.{name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, (App, Screen)) and obj.__module__ == module.__name__:
                for binding in obj.BINDINGS:
                    keys = binding.key if isinstance(binding, Binding) else binding[0]
                    letters.update(k.lower() for k in keys.split(",") if len(k) == 1 and k.isalpha())
    return letters


SENTENCE = "What is the capital of Italy? Explain it, yes, and don't index guesses."


def test_typing_is_typing_even_when_the_stage_list_has_focus():
    # The issue: after adding a stage, typing a question opened "Add a stage" (the `a` of "What").
    assert bound_letters() <= set(SENTENCE.lower())

    async def scenario():
        app = create_app(input_text="first record\n")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.pipeline_screen
            await add_stage(pilot, "lm-template", {})
            assert screen.focused is screen.query_one("#stages")
            await pilot.press(*SENTENCE)
            await pilot.pause()
            typed = screen.query_one("#input").text
            top, focused = type(app.screen).__name__, screen.focused.id
            # A paste outside a text field lands in the input box too.
            screen.set_focus(screen.query_one("#stages"))
            app.post_message(events.Paste(" Briefly."))
            await pilot.pause()
            pasted = screen.query_one("#input").text
            # The footer says how to reach the input; the commands are chords.
            shown = {b.binding.key_display or b.binding.key: b.binding.description
                     for b in screen.active_bindings.values() if b.binding.show}
            return typed, pasted, top, focused, screen.pipeline, shown

    typed, pasted, top, focused, pipeline, shown = asyncio.run(scenario())
    assert top == "PipelineScreen" and focused == "input"  # no dialog opened
    assert typed == "first record\n" + SENTENCE  # appended where the records end
    assert pasted == typed + " Briefly."
    assert pipeline == Pipeline((Stage("lm-template"),))  # no stage added, edited or removed
    assert shown["type"] == "to Input"
    assert not [k for k in shown if len(k) == 1]


BURST = "Name three colours and say which is warm"  # 40 keys, as tmux or a fast typist sends them
PASTED = '{"text": "Name a color", "id": 1}\n{"text": "What is a pipe?", "id": 2}\nplain text, a record too\n'


def test_a_burst_of_keys_arrives_whole_while_the_stage_list_has_focus():
    # The issue: the first key moved the focus and the keys already on their way were dropped,
    # so the run answered the prompt "N".
    async def scenario():
        app = create_app(pipeline=Pipeline((Stage("lm-template"),)), input_text="first record\n")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.pipeline_screen
            assert screen.focused is screen.query_one("#stages")
            burst(app, BURST)
            await pilot.pause()
            return screen.query_one("#input").text, type(app.screen).__name__, screen.focused.id, screen.pipeline

    text, top, focused, pipeline = asyncio.run(scenario())
    assert len(BURST) == 40
    assert text == "first record\n" + BURST
    assert top == "PipelineScreen" and focused == "input"
    assert pipeline == Pipeline((Stage("lm-template"),))


def test_a_paste_arrives_whole_while_the_output_panel_has_focus():
    async def scenario():
        app = create_app(input_text="first record\n")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.pipeline_screen
            screen.set_focus(screen.query_one("#output"))
            await pilot.pause()
            burst(app, "x")  # a key and a paste in one go: both arrive, in order
            app.post_message(events.Paste(PASTED))
            app.post_message(events.Paste(PASTED))
            await pilot.pause()
            return screen.query_one("#input").text, screen.focused.id

    text, focused = asyncio.run(scenario())
    assert text == "first record\nx" + PASTED + PASTED
    assert focused == "input"


def test_typing_in_the_stage_form_fills_its_first_field_when_no_field_has_focus():
    async def scenario():
        app = create_app(pipeline=Pipeline((Stage("lm-generate", ("--max-new-tokens", "5")),)))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+e")
            await pilot.pause()
            form = app.screen
            opened_on = type(form.focused).__name__  # the form itself, not a field
            burst(app, BURST)
            app.post_message(events.Paste(" and why"))
            await pilot.pause()
            first = form.query_one("#opt-prompt").value
            # A field with the focus keeps its own typing.
            tokens = form.query_one("#opt-max_new_tokens")
            form.set_focus(tokens)
            await pilot.pause()
            tokens.cursor_position = len(tokens.value)
            burst(app, "0")
            await pilot.pause()
            await pilot.press("ctrl+s")
            await pilot.pause()
            return opened_on, first, app.pipeline_screen.pipeline

    opened_on, first, pipeline = asyncio.run(scenario())
    assert opened_on == "OptionForm"
    assert first == BURST + " and why"
    assert pipeline == Pipeline((Stage("lm-generate", ("--max-new-tokens", "50", BURST + " and why")),))


def test_typing_during_a_run_edits_the_next_input_and_never_cancels_it(tiny_llama):
    model = str(tiny_llama)
    pipeline = Pipeline((Stage("lm-generate", ("--model", model, "--max-new-tokens", "200")),))
    lines = "".join(f"record {i}\n" for i in range(20))

    async def scenario():
        app = create_app(pipeline=pipeline, input_text=lines)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.pipeline_screen
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen.run_ is not None and screen.run_.snapshots()[0].records_in > 0)
            burst(app, BURST)
            app.post_message(events.Paste(PASTED))
            await pilot.pause()
            typed, running = screen.query_one("#input").text, screen.running
            await pilot.press("escape")
            await wait_for(pilot, lambda: screen.sub_title == "cancelled")
            return typed, running, screen.last_codes

    typed, running, codes = asyncio.run(scenario())
    assert typed == lines + BURST + PASTED
    assert running  # still going after the typing; only Esc cancelled it
    assert len(codes) == 1


def test_output_panel_shows_the_answers_wrapped_and_the_raw_lines_on_a_key():
    long = "Rome is the capital of Italy, on the Tiber; the Forum and the Colosseum stand in its centre."
    lines = [orjson.dumps(r) + b"\n" for r in ({"text": "Capital of Italy?", "answer": long},
                                               {"text": "x", "error": "prompt too long", "line": 2},
                                               {"id": 3, "text": "Name a color", "answer": "Blue."})]

    async def scenario():
        app = create_app(pipeline=Pipeline((Stage("lm-generate", ("--out", "answer")),)))
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.pipeline_screen
            output = screen.query_one("#output")  # shows the last stage's --out
            for line in lines:
                screen.post_message(OutputLine(line))
            await pilot.pause()
            readable = [strip.text.rstrip() for strip in output.lines]
            title = output.border_title
            await pilot.press("ctrl+l")
            await pilot.pause()
            raw = "".join(strip.text.rstrip() for strip in output.lines)
            return readable, title, raw, output.border_title, output.size.width

    readable, title, raw, raw_title, width = asyncio.run(scenario())
    assert title == "Output: answer" and raw_title == "Output: raw JSONL"
    first = readable[:readable.index("2 line 2: prompt too long")]
    assert len(first) > 1 and all(len(line) <= width for line in readable)  # wrapped, not cut
    assert first[0].startswith("1 Rome") and " ".join(line[2:] for line in first) == long
    assert readable[len(first):] == ["2 line 2: prompt too long", "3 Blue."]
    expected = b"".join(lines).decode()
    assert "".join(raw.split()) == "".join(expected.split())  # every byte of every line, wrapped
