"""Configure one stage: its tool's options as a form, the resulting command line below."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Footer, Input, Label, Static

from lmpipe.cli.commands import args_from_values, spec, values_from_args

from ..pipeline import Stage
from ..typing import TypingBox
from ..widgets.option_form import OptionForm


class StageForm(TypingBox, ModalScreen[Stage | None]):
    """Typing while no field has the focus (the form itself has it when it opens) fills the first
    text field (lmpipe.tui.typing)."""

    BINDINGS = [Binding("ctrl+s", "save", "Apply"), Binding("escape", "cancel", "Cancel")]

    def __init__(self, stage: Stage):
        super().__init__(classes="dialog")
        self.stage = stage
        self.tool = spec(stage.tool)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog-body form"):
            yield Label(f"[b]{self.tool.name}[/]  {self.tool.summary}")
            yield OptionForm(self.tool, values_from_args(self.tool, list(self.stage.args)))
            yield Static(self.stage.shell(), id="form-command", classes="command", markup=False)
        yield Footer(compact=True)

    def typing_box(self) -> Input | None:
        return next(iter(self.query_one(OptionForm).query(Input)), None)

    def _stage(self) -> Stage:
        return Stage(self.tool.name, tuple(args_from_values(self.tool, self.query_one(OptionForm).values())))

    def on_input_changed(self) -> None:
        self._preview()

    def on_checkbox_changed(self) -> None:
        self._preview()

    def on_select_changed(self) -> None:
        self._preview()

    def _preview(self) -> None:
        if self.is_mounted:
            self.query_one("#form-command", Static).update(self._stage().shell())

    def action_save(self) -> None:
        self.dismiss(self._stage())

    def action_cancel(self) -> None:
        self.dismiss(None)
