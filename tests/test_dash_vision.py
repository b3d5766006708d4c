"""lm-dash's chat attaches an image to a message (`/image PATH`): a vision-language model answers
it as lm-generate --image does; a bad image is said at once and nothing is attached."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner
from conftest import jsonl
from dash_helpers import wait_for

from lmpipe.bin.generate import main as generate
from lmpipe.tui.app import create_app
from lmpipe.tui.screens.chat import Turn

MAX = "6"
QUESTION = "Describe this image."


def test_an_attached_image_goes_with_the_next_message(tiny_llava, photos, tmp_path):
    path = str(photos["wide"])

    async def scenario():
        app = create_app(model=str(tiny_llava), screen="chat")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            screen.query_one("#chat-max").value = MAX
            screen.query_one("#chat-prompt").value = f"/image {tmp_path / 'missing.png'}"
            await pilot.press("enter")
            refused = screen.image
            screen.query_one("#chat-prompt").value = f"/image {path}"
            await pilot.press("enter")
            attached = screen.image
            screen.query_one("#chat-prompt").value = QUESTION
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.replying is None)
            replies = [t for t in screen.query(Turn) if t.role == "assistant"]
            return refused, attached, screen.image, screen.conversation.messages(), replies[0].text, replies[0].stats

    refused, attached, after, messages, _, stats = asyncio.run(scenario())
    assert refused is None and attached == path and after is None
    assert messages[0]["content"] == [{"type": "image_url", "image_url": {"url": path}},
                                      {"type": "text", "text": QUESTION}]
    result = CliRunner().invoke(generate, ["-m", str(tiny_llava), "-n", MAX, "--no-server", "--image", path,
                                           QUESTION], catch_exceptions=False)
    record = jsonl(result.stdout_bytes)[0]
    assert messages[1]["content"] == record["generated"]
    assert stats["image_tokens"] == record["stats"]["image_tokens"] == 16
    assert stats["input_tokens"] == record["stats"]["input_tokens"]
