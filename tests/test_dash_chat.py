"""lm-dash's chat screen: two turns with memory, stats per reply, a conversation lm-generate reads."""

from __future__ import annotations

import asyncio

from conftest import jsonl, run_tool
from dash_helpers import burst, wait_for
from textual import events

from lmpipe.models.loading import ModelSettings
from lmpipe.tui.app import create_app
from lmpipe.tui.pool import ContextFill, ModelPool
from lmpipe.tui.screens.chat import Turn
from lmpipe.tui.widgets.context_gauge import ContextGauge

MAX = "6"
CTX = 120  # lm-dash --ctx-size: two short turns fit, a long third question does not


def test_two_turns_with_memory_and_stats(tiny_llama, tmp_path):
    model = str(tiny_llama)
    saved = tmp_path / "chat.jsonl"

    async def scenario():
        app = create_app(model=model, screen="chat", pool=ModelPool(ModelSettings(ctx_size=CTX)))
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            gauge = screen.query_one(ContextGauge)
            screen.query_one("#chat-max").value = MAX
            screen.query_one("#chat-system").value = "You are terse."
            fills = [gauge.fill]
            for question in ("Hello, I am Ada.", "What is my name?"):
                screen.query_one("#chat-prompt").value = question
                await pilot.press("enter")
                await wait_for(pilot, lambda: screen.replying is None)
                fills.append(gauge.fill)
            shown = str(gauge.render())
            # A question the context cannot hold is refused, as lm-generate refuses it; the gauge stays.
            screen.query_one("#chat-prompt").value = "Tell me about pipes. " * 30
            await pilot.press("enter")
            await wait_for(pilot, lambda: screen.replying is None)
            fills.append(gauge.fill)
            refused = [n.message for n in app._notifications]
            replies = [t for t in screen.query(Turn) if t.role == "assistant"]
            stats = [str(t.query_one(".turn-stats").render()) for t in replies]
            inputs = [t.stats["input_tokens"] for t in replies]
            outputs = [t.stats["output_tokens"] for t in replies]
            await pilot.press("ctrl+s")
            await pilot.pause()
            app.screen.query_one("#path").value = str(saved)
            await pilot.press("enter")
            await pilot.pause()
            return screen.conversation, stats, inputs, outputs, fills, shown, refused

    conversation, stats, inputs, outputs, fills, shown, refused = asyncio.run(scenario())
    roles = [m["role"] for m in conversation.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert len(stats) == 2 and all("ttft" in s and "tok/s" in s and "out" in s for s in stats)

    # The saved conversation is one `messages` record; lm-generate, given it without the last reply,
    # writes that reply: the second turn saw the first (memory), exactly as the tool would.
    [record] = jsonl(saved.read_bytes())
    assert record["messages"] == conversation.messages()
    question = {"messages": record["messages"][:-1]}
    result = run_tool("lm-generate", "-m", model, "-n", MAX, input=jsonl_line(question))
    assert result.returncode == 0, result.stderr
    [generated] = jsonl(result.stdout)
    assert generated["generated"] == record["messages"][-1]["content"]

    # The second prompt held the whole conversation so far: its token count is transformers' own.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)

    def prompt_tokens(messages):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    messages = record["messages"]
    assert inputs == [prompt_tokens(messages[:2]), prompt_tokens(messages[:4])]
    assert inputs[1] > prompt_tokens([messages[0], messages[3]])
    assert f"{inputs[1]} in" in stats[1]

    # The gauge: after each turn, that chat's prompt and answer out of --ctx-size.
    assert generated["stats"]["output_tokens"] == outputs[1] and all(0 < n <= int(MAX) for n in outputs)
    assert fills == [ContextFill(0, None), ContextFill(inputs[0] + outputs[0], CTX),
                     ContextFill(inputs[1] + outputs[1], CTX), ContextFill(inputs[1] + outputs[1], CTX)]
    assert shown.startswith(f"ctx {inputs[1] + outputs[1]}/{CTX} ")
    [message] = refused
    assert message.startswith("prompt is ") and message.endswith(f" tokens; the model's context is {CTX}")


def jsonl_line(record: dict) -> bytes:
    import orjson

    return orjson.dumps(record) + b"\n"


def test_reasoning_is_shown_apart_from_the_answer():
    from lmpipe.tui.pool import Reply

    stats = {"input_tokens": 9, "output_tokens": 4, "ttft_s": 0.1, "tokens_per_s": 20.0, "total_s": 0.3,
             "finish_reason": "eos"}

    async def scenario():
        app = create_app(screen="chat")
        async with app.run_test(size=(80, 24)) as pilot:
            turn = Turn("assistant")
            await app.screen.query_one("#transcript").mount(turn)
            turn.finish(Reply("Paris.", "The capital of France is Paris.", stats))
            await pilot.pause()
            return [str(turn.query_one(c).render()) for c in (".turn-reasoning", ".turn-text", ".turn-stats")]

    reasoning, text, line = asyncio.run(scenario())
    assert reasoning == "thinking: The capital of France is Paris."
    assert text == "Paris."
    assert line == "9 in · 4 out · ttft 100 ms · 20.0 tok/s · 0.30 s · eos"


BURST = "Name three colours and say which is warm"  # 40 keys at once, as tmux or a fast typist sends them
PASTED = "First line of a note,\nits second line,\r\nand the last.\n"


def test_typing_and_pasting_reach_the_prompt_while_the_transcript_has_focus():
    async def scenario():
        app = create_app(screen="chat")
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            prompt = screen.query_one("#chat-prompt")
            prompt.value = "Hi."
            screen.set_focus(screen.query_one("#transcript"))
            await pilot.pause()
            burst(app, " " + BURST)
            await pilot.pause()
            typed = prompt.value
            screen.set_focus(screen.query_one("#transcript"))
            await pilot.pause()
            burst(app, " ")
            app.post_message(events.Paste(PASTED))
            await pilot.pause()
            # A settings field keeps its own typing.
            model = screen.query_one("#chat-model")
            screen.set_focus(model)
            await pilot.pause()
            model.cursor_position = len(model.value)
            burst(app, "-x")
            await pilot.pause()
            return typed, prompt.value, model.value, screen.focused.id

    typed, pasted, model, focused = asyncio.run(scenario())
    assert typed == "Hi. " + BURST
    # The prompt is one line: the paste's lines arrive whole, joined by spaces.
    assert pasted == typed + " First line of a note, its second line, and the last."
    assert model == "smollm2-x" and focused == "chat-model"
