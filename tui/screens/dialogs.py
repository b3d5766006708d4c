"""Small modal dialogs: ask for a path, confirm, pick a tool."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, OptionList
from textual.widgets.option_list import Option

from lmpipe.cli.commands import spec, tool_names


class AskPath(ModalScreen[str | None]):
    """One line of text (a file path); Enter accepts, Escape cancels."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str = ""):
        super().__init__(classes="dialog")
        self.title_text, self.value = title, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Label(self.title_text)
            yield Input(self.value, placeholder="path", id="path")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen[bool]):
    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str):
        super().__init__(classes="dialog")
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body"):
            yield Label(self.question)
            yield Label("[b]y[/] yes   [b]n[/] no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PickTool(ModalScreen[str | None]):
    """The installed lm-* tools; type to filter, Enter adds the highlighted one."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("down", "down", "Next", show=False),
                Binding("up", "up", "Previous", show=False)]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body tall"):
            yield Label("Add a stage")
            yield Input(placeholder="filter", id="filter")
            yield OptionList(id="tools")

    def on_mount(self) -> None:
        self._fill("")

    def _fill(self, needle: str) -> None:
        tools = self.query_one("#tools", OptionList)
        tools.clear_options()
        for name in tool_names():
            if needle.lower() in name.lower():
                tools.add_option(Option(f"{name:<16} {spec(name).summary}", id=name))
        if tools.option_count:
            tools.highlighted = 0

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill(event.value.strip())

    def on_input_submitted(self, event: Input.Submitted) -> None:
        tools = self.query_one("#tools", OptionList)
        if tools.highlighted is not None:
            self.dismiss(tools.get_option_at_index(tools.highlighted).id)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_down(self) -> None:
        self.query_one("#tools", OptionList).action_cursor_down()

    def action_up(self) -> None:
        self.query_one("#tools", OptionList).action_cursor_up()

    def action_cancel(self) -> None:
        self.dismiss(None)
