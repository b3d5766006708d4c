"""The chat screen: a multi-turn conversation with memory, its settings, streamed replies."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.text import Text
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Static

from lmpipe.chat.conversation import Conversation
from lmpipe.errors import RecordError
from lmpipe.records.jsonl import encode
from lmpipe.terminal.display import stats_line
from lmpipe.vision.images import read_image

from ..messages import ContextFilled, ReplyFailed, ReplyFinished, ReplyStreaming
from ..pool import ChatSettings, ContextFill, ModelPool, Reply, chat_turn
from ..typing import TypingBox
from ..widgets.context_gauge import ContextGauge
from .dialogs import AskPath


class Turn(Vertical):
    """One message of the transcript; an assistant's shows its reasoning apart and its stats."""

    def __init__(self, role: str, text: str = ""):
        super().__init__(classes=f"turn {role}")
        self.role, self.text = role, text
        self.stats: dict = {}

    def compose(self) -> ComposeResult:
        yield Static(Text(self.role, style="bold"), classes="turn-role")
        yield Static(Text("", style="italic dim"), classes="turn-reasoning")
        yield Static(Text(self.text), classes="turn-text")
        yield Static("", classes="turn-stats")

    def stream(self, text: str, tokens: int) -> None:
        self.query_one(".turn-text", Static).update(Text(text))
        self.query_one(".turn-stats", Static).update(Text(f"{tokens} tokens…", style="dim"))

    def finish(self, reply: Reply) -> None:
        self.stats = reply.stats
        if reply.reasoning:
            self.query_one(".turn-reasoning", Static).update(Text(f"thinking: {reply.reasoning}", style="italic dim"))
        self.query_one(".turn-text", Static).update(Text(reply.text))
        self.query_one(".turn-stats", Static).update(Text(reply_stats(reply.stats), style="dim"))


def reply_stats(stats: dict) -> str:
    if "ttft_s" in stats:
        return stats_line(stats)
    return f"{stats.get('output_tokens', 0)} out · {stats.get('finish_reason', '')}"


class MessageBox(Input):
    """The message box: one line, so a pasted text's lines arrive joined by spaces (Textual's Input
    keeps the first line of a paste and drops the rest)."""

    def on_paste(self, event: events.Paste) -> None:
        event.stop()
        event.prevent_default()  # not Input's paste too
        text = " ".join(event.text.splitlines())
        if self.selection.is_empty:
            self.insert_text_at_cursor(text)
        else:
            self.replace(text, *self.selection)


class ChatScreen(TypingBox, Screen):
    """Typing is typing: printable keys and pastes typed outside a text field go to the message box
    (lmpipe.tui.typing)."""

    TITLE = "Chat"
    BINDINGS = [
        Binding("ctrl+n", "new", "New"),
        Binding("ctrl+s", "save", "Save"),
        Binding("escape", "stop", "Stop"),
    ]

    def __init__(self, pool: ModelPool, model: str = "smollm2", defaults: ChatSettings = ChatSettings()):
        """`defaults`: the command line's template and thinking settings, kept for every turn."""
        super().__init__()
        self.pool = pool
        self.model = model
        self.defaults = defaults
        self.conversation = Conversation()
        self.replying: Turn | None = None
        self.image: str | None = None  # attached by `/image PATH`, sent with the next message
        # How full the context is: after the last reply (its prompt and answer); the prompt of the one being written.
        self.filled = ContextFill(0, None)
        self.prompt_fill = ContextFill(0, None)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="chat-settings", classes="settings"):
            yield Label("model")
            yield Input(self.model, id="chat-model", compact=True)
            yield Label("temp")
            yield Input("0", id="chat-temperature", compact=True, type="number")
            yield Label("max")
            yield Input("256", id="chat-max", compact=True, type="integer")
            yield ContextGauge(id="chat-context")
        with Horizontal(id="chat-system-row", classes="settings"):
            yield Label("system")
            yield Input("", id="chat-system", compact=True, placeholder="system prompt (optional)")
        yield VerticalScroll(id="transcript")
        yield MessageBox(placeholder="Message (Enter sends; /image PATH attaches an image)", id="chat-prompt")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#chat-prompt").focus()

    def typing_box(self) -> Input:
        return self.query_one("#chat-prompt", Input)

    def settings(self) -> ChatSettings:
        def number(id_: str, default: float) -> float:
            try:
                return float(self.query_one(id_, Input).value)
            except ValueError:
                return default

        return ChatSettings(
            model=self.query_one("#chat-model", Input).value.strip() or "smollm2",
            system=self.query_one("#chat-system", Input).value.strip(),
            temperature=max(0.0, number("#chat-temperature", 0.0)),
            max_new_tokens=max(1, int(number("#chat-max", 256))),
            template=self.defaults.template,
            reasoning_budget=self.defaults.reasoning_budget,
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "chat-prompt":
            return
        text = event.value.strip()
        if not text:
            return
        if text.startswith("/image"):
            event.input.value = ""
            self.attach(text.removeprefix("/image").strip())
            return
        if self.replying is not None:
            self.notify("wait for the reply, or stop it (Esc)", severity="warning")
            return
        event.input.value = ""
        settings = self.settings()
        self.conversation.system = settings.system
        content: str | list[dict[str, Any]] = text
        shown = text
        if self.image is not None:  # OpenAI's parts, as lm-generate and lm-serve read them
            content = [{"type": "image_url", "image_url": {"url": self.image}}, {"type": "text", "text": text}]
            shown = f"[image {self.image}]\n{text}"
            self.image = None
        self.conversation.turns.append({"role": "user", "content": content})
        transcript = self.query_one("#transcript", VerticalScroll)
        transcript.mount(Turn("user", shown))
        self.replying = Turn("assistant")
        transcript.mount(self.replying)
        transcript.scroll_end(animate=False)
        self.reply(self.conversation.messages(), settings)

    def attach(self, path: str) -> None:
        """`/image PATH`: read now (a bad image is said at once), sent with the next message."""
        if not path:
            self.notify("/image PATH: name an image file", severity="warning")
            return
        try:
            read_image(path)
        except RecordError as exc:
            self.notify(str(exc), severity="error", title="image not attached")
            return
        self.image = path
        self.notify(f"image attached: {path} (sent with your next message)")

    @work(thread=True, exclusive=True, group="chat")
    def reply(self, messages: list[dict], settings: ChatSettings) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        try:
            answer = chat_turn(self.pool, messages, settings,
                               on_text=lambda text, n: self.post_message(ReplyStreaming(text, n)),
                               cancelled=lambda: worker.is_cancelled,
                               on_prompt=lambda fill: self.post_message(ContextFilled(fill)))
        except Exception as exc:  # noqa: BLE001 - a worker reports every failure, the app stays up
            self.post_message(ReplyFailed(str(exc)))
            return
        self.post_message(ReplyFinished(answer))

    def on_context_filled(self, message: ContextFilled) -> None:
        self.prompt_fill = message.fill
        self.query_one(ContextGauge).show(message.fill)

    def on_reply_streaming(self, message: ReplyStreaming) -> None:
        if self.replying is not None:
            self.replying.stream(message.text, message.tokens)
            fill = replace(self.prompt_fill, used=self.prompt_fill.used + message.tokens)
            self.query_one(ContextGauge).show(fill)

    def on_reply_finished(self, message: ReplyFinished) -> None:
        if self.replying is None:
            return
        self.replying.finish(message.reply)
        # The sequence the next turn extends: this prompt and the whole answer, as the loop counted them.
        stats = message.reply.stats
        used = stats.get("input_tokens", self.prompt_fill.used) + stats.get("output_tokens", 0)
        self.filled = replace(self.prompt_fill, used=used)
        self.query_one(ContextGauge).show(self.filled)
        self.replying = None
        self.conversation.turns.append({"role": "assistant", "content": message.reply.text})
        self.query_one("#transcript", VerticalScroll).scroll_end(animate=False)

    def on_reply_failed(self, message: ReplyFailed) -> None:
        self.notify(message.error, severity="error", title="reply failed")
        if self.replying is not None:
            self.replying.remove()
            self.replying = None
        if self.conversation.turns and self.conversation.turns[-1]["role"] == "user":
            self.conversation.turns.pop()  # the turn without its reply is not part of the memory
        self.query_one(ContextGauge).show(self.filled)

    def action_stop(self) -> None:
        self.workers.cancel_group(self, "chat")

    def action_new(self) -> None:
        self.action_stop()
        self.conversation = Conversation()
        self.replying = None
        self.query_one("#transcript", VerticalScroll).remove_children()
        self.filled = replace(self.filled, used=0)
        self.query_one(ContextGauge).show(self.filled)

    def action_save(self) -> None:
        def save(path: str | None) -> None:
            if not path:
                return
            try:
                with open(path, "ab") as f:
                    f.write(encode(self.conversation.record()))
            except OSError as exc:
                self.notify(f"cannot save {path}: {exc.strerror}", severity="error")
                return
            self.notify(f"conversation appended to {path}")

        if not self.conversation.turns:
            self.notify("nothing to save yet", severity="warning")
            return
        self.app.push_screen(AskPath("Append the conversation (JSONL `messages`) to", "chat.jsonl"), save)
