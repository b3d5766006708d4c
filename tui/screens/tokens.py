"""The tokens screen: text as colored token boxes, and a generation's tokens with probabilities."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, Static, TextArea

from lmpipe.terminal.display import probability_style, token_box, token_boxes

from ..messages import ProbsReady, TokensFailed, TokensReady
from ..pool import ModelPool, generate_with_probs, tokenize

TOP = 5


def boxes(encoding: dict) -> Text:
    """lm-tokenize's colors, as lm-tokenize draws them, with a space between boxes."""
    return token_boxes(encoding, separator=" ")


def counts(encoding: dict) -> str:
    special, added = sum(encoding["special"]), sum(encoding["added"])
    return f"{encoding['count']} tokens · {special} special · {added} added · {len(encoding.get('text', ''))} chars"


class TokensScreen(Screen):
    TITLE = "Tokens"
    BINDINGS = [
        Binding("ctrl+t", "tokenize", "Tokenize"),
        Binding("ctrl+g", "generate", "Probabilities"),
    ]

    def __init__(self, pool: ModelPool, model: str = "smollm2"):
        super().__init__()
        self.pool, self.model = pool, model

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(classes="settings"):
            yield Label("model")
            yield Input(self.model, id="tok-model", compact=True)
            yield Label("new tokens")
            yield Input("12", id="tok-max", compact=True, type="integer")
        yield TextArea("", id="tok-text", soft_wrap=True)
        yield Static("", id="tok-counts")
        with VerticalScroll(id="tok-boxes-scroll"):
            yield Static("", id="tok-boxes")
        with Horizontal(id="tok-gen"):
            yield DataTable(id="tok-table", cursor_type="row", zebra_stripes=True)
            yield Static("", id="tok-alts")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#tok-text").border_title = "Text"
        self.query_one("#tok-table").border_title = "Generated tokens"
        self.query_one("#tok-alts").border_title = "Alternatives"
        self.query_one("#tok-table", DataTable).add_columns("#", "token", "p")
        self.tokens: list = []
        self.texts: list[str] = []
        self.query_one("#tok-text").focus()

    def text(self) -> str:
        return self.query_one("#tok-text", TextArea).text

    def on_text_area_changed(self) -> None:
        self.action_tokenize()

    def action_tokenize(self) -> None:
        self.run_tokenize(self.query_one("#tok-model", Input).value.strip() or "smollm2", self.text())

    @work(thread=True, exclusive=True, group="tokenize")
    def run_tokenize(self, model: str, text: str) -> None:
        try:
            encoding = tokenize(self.pool, model, text)
        except Exception as exc:  # noqa: BLE001 - a worker reports every failure, the app stays up
            self.post_message(TokensFailed(str(exc)))
            return
        self.post_message(TokensReady({**encoding, "text": text}))

    def on_tokens_ready(self, message: TokensReady) -> None:
        if message.encoding.get("text") != self.text():
            return  # an older text's answer
        self.query_one("#tok-counts", Static).update(Text(counts(message.encoding)))
        self.query_one("#tok-boxes", Static).update(boxes(message.encoding))

    def on_tokens_failed(self, message: TokensFailed) -> None:
        self.notify(message.error, severity="error")

    def action_generate(self) -> None:
        try:
            limit = max(1, int(self.query_one("#tok-max", Input).value))
        except ValueError:
            limit = 12
        self.notify("generating…", timeout=2)
        self.run_generate(self.query_one("#tok-model", Input).value.strip() or "smollm2", self.text(), limit)

    @work(thread=True, exclusive=True, group="generate")
    def run_generate(self, model: str, text: str, limit: int) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        try:
            tokens = generate_with_probs(self.pool, model, text, limit, TOP, lambda: worker.is_cancelled)
            tokenizer = self.pool.tokenizer(model)
            texts = [tokenizer.decode([t.id]) for t in tokens]
        except Exception as exc:  # noqa: BLE001 - a worker reports every failure, the app stays up
            self.post_message(TokensFailed(str(exc)))
            return
        self.post_message(ProbsReady(tokens, texts))

    def on_probs_ready(self, message: ProbsReady) -> None:
        self.tokens, self.texts = message.tokens, message.texts
        table = self.query_one("#tok-table", DataTable)
        table.clear()
        for i, (token, text) in enumerate(zip(self.tokens, self.texts, strict=True)):
            table.add_row(str(i + 1), token_box(text, probability_style(token.p)), f"{token.p:.3f}")
        if self.tokens:
            table.move_cursor(row=0)
            self.show_alternatives(0)
            table.focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.show_alternatives(event.cursor_row)

    def show_alternatives(self, row: int) -> None:
        if not 0 <= row < len(self.tokens):
            return
        token = self.tokens[row]
        lines = Text()
        for alt in token.top:
            chosen = "▶ " if alt.id == token.id else "  "
            lines.append(chosen)
            lines.append_text(token_box(alt.token, probability_style(alt.p)))
            lines.append(f" {alt.p:.3f}\n")
        self.query_one("#tok-alts", Static).update(lines)
