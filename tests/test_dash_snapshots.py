"""Snapshots of every lm-dash screen at 80x24 and 120x40 (no timings, no paths: nothing that varies).

Update them after a deliberate change with: pytest tests/test_dash_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest
from dash_helpers import wait_for
from test_dash_models import fake_tools  # noqa: F401 (fixture)

from lmpipe.tui.app import create_app
from lmpipe.tui.pipeline import Pipeline, Stage


async def steady(pilot) -> None:
    """No text cursor (it blinks): a snapshot must not depend on when it is taken."""
    from textual.widgets import Input, TextArea

    if isinstance(pilot.app.screen.focused, (Input, TextArea)):
        pilot.app.screen.set_focus(None)
    await pilot.pause()


SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 40), id="120x40")]
PIPELINE = Pipeline((Stage("lm-tokenize", ("--no-special",)),
                     Stage("lm-generate", ("--max-new-tokens", "8", "--seed", "1"))))
INPUT = 'What is a pipe?\n{"text": "Name a color", "id": 2}\n'


@pytest.mark.parametrize("size", SIZES)
def test_pipeline_screen(snap_compare, size):
    assert snap_compare(create_app(pipeline=PIPELINE, input_text=INPUT), terminal_size=size, run_before=steady)


@pytest.mark.parametrize("size", SIZES)
def test_output_panel(snap_compare, size):
    """Each record's generated text, wrapped under its number; an error record in red."""
    import orjson

    from lmpipe.tui.messages import OutputLine

    records = [
        {"text": "What is a pipe?", "generated": "A pipe connects the output of one program to the input of "
                                                  "the next, so small tools can be joined into larger ones."},
        {"text": "Name a color", "id": 2, "error": "prompt too long", "line": 2},
        {"text": "What is the capital of Italy?", "generated": "The capital of Italy is Rome."},
    ]

    async def before(pilot):
        screen = pilot.app.screen
        for record in records:
            screen.post_message(OutputLine(orjson.dumps(record) + b"\n"))
        await steady(pilot)

    assert snap_compare(create_app(pipeline=PIPELINE, input_text=INPUT), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_stage_form(snap_compare, size):
    async def before(pilot):
        await pilot.press("ctrl+e")
        await steady(pilot)

    assert snap_compare(create_app(pipeline=PIPELINE), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_chat_screen(snap_compare, size):
    """The context gauge as a prompt of 3000 tokens leaves it (--ctx-size 8192)."""
    from lmpipe.tui.messages import ContextFilled
    from lmpipe.tui.pool import ContextFill

    async def before(pilot):
        pilot.app.screen.query_one("#chat-system").value = "You are terse."
        pilot.app.screen.query_one("#chat-prompt").value = "Hello"
        pilot.app.screen.post_message(ContextFilled(ContextFill(3000, 8192)))
        await steady(pilot)

    assert snap_compare(create_app(screen="chat"), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_tokens_screen(snap_compare, size, embedded):
    async def before(pilot):
        screen = pilot.app.screen
        screen.query_one("#tok-text").text = "Pipes carry <|im_start|> tokens, naïvely."
        await wait_for(pilot, lambda: str(screen.query_one("#tok-counts").render()))
        await steady(pilot)

    assert snap_compare(create_app(screen="tokens"), terminal_size=size, run_before=before)


@pytest.mark.parametrize("size", SIZES)
def test_models_screen(snap_compare, size, fake_tools):  # noqa: F811
    async def before(pilot):
        screen = pilot.app.screen
        await wait_for(pilot, lambda: len(screen.models) == 3)
        await pilot.press("i")
        await wait_for(pilot, lambda: "parameters" in str(screen.query_one("#model-info").render()))
        await steady(pilot)

    assert snap_compare(create_app(screen="models"), terminal_size=size, run_before=before)
