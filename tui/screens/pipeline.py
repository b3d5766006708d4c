"""The pipeline screen: stages to edit, input to feed, meters to watch, the shell line to copy."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Label, ListItem, ListView, Static, TextArea

from lmpipe.errors import LmpipeError

from ..live import PipelineRun, StageSnapshot
from ..messages import OutputLine, RunFinished, StageUpdated
from ..pipeline import Pipeline, Stage
from ..typing import TypingBox, focus_at_end
from ..widgets.output_view import OutputView
from ..widgets.stage_meter import StageMeter
from .dialogs import AskPath, PickTool
from .stage_form import StageForm


class PipelineScreen(TypingBox, Screen):
    """Typing is typing: printable keys and pastes typed outside a text field go to the input box
    (lmpipe.tui.typing), so every command is a chord (or Enter/Delete on the stage list), never a letter."""

    TITLE = "Pipeline"
    BINDINGS = [
        Binding("ctrl+t", "focus_input", "to Input", key_display="type"),
        Binding("ctrl+n", "add", "Add"),
        Binding("ctrl+e", "configure", "Edit"),
        Binding("delete", "remove", "Remove"),
        Binding("ctrl+r", "run", "Run"),
        Binding("ctrl+l", "toggle_raw", "Raw"),
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+o", "load", "Load"),
        Binding("ctrl+f", "input_file", "Input file"),
        Binding("ctrl+y", "copy", "Copy"),
        Binding("shift+up", "move(-1)", "Up", show=False),
        Binding("shift+down", "move(1)", "Down", show=False),
    ]

    def __init__(self, pipeline: Pipeline | None = None, input_text: str = "", path: str | None = None):
        super().__init__()
        self.pipeline = pipeline or Pipeline()
        self.input_text = input_text
        self.path = path
        self.run_: PipelineRun | None = None
        self.last_output: bytes = b""
        self.last_codes: tuple[int | None, ...] = ()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="pipe-main"):
            yield ListView(id="stages")
            yield VerticalScroll(id="meters")
        with Horizontal(id="pipe-io"):
            yield TextArea(self.input_text, id="input", show_line_numbers=False, soft_wrap=False)
            yield OutputView(id="output")
        yield Static("", id="shell", markup=False)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#stages").border_title = "Stages"
        self.query_one("#meters").border_title = "Meters"
        self.query_one("#input").border_title = "Input: text or JSONL, a record a line"
        self.redraw()
        self.query_one("#stages").focus()

    # -- drawing -----------------------------------------------------------------------------

    def redraw(self, select: int | None = None) -> None:
        stages = self.query_one("#stages", ListView)
        keep = stages.index if select is None else select
        stages.clear()
        for i, stage in enumerate(self.pipeline.stages):
            stages.append(ListItem(Label(Text(f"{i + 1} {stage.shell()}")), classes="stage"))
        if self.pipeline.stages:
            stages.index = min(max(keep or 0, 0), len(self.pipeline.stages) - 1)
        meters = self.query_one("#meters", VerticalScroll)
        meters.remove_children()
        meters.mount_all([StageMeter(i, s) for i, s in enumerate(self.pipeline.stages)])
        if not self.running:
            last = self.pipeline.stages[-1] if self.pipeline.stages else None
            self.query_one("#output", OutputView).show_field(last.out_field() if last else None)
        shell = self.pipeline.shell()
        self.query_one("#shell", Static).update(f"$ {shell}" if shell else "$ (add a stage with Ctrl+N)")

    def set_pipeline(self, pipeline: Pipeline, select: int | None = None) -> None:
        if self.running:
            self.notify("The pipeline is running: cancel it first (Esc).", severity="warning")
            return
        self.pipeline = pipeline
        self.redraw(select)

    @property
    def running(self) -> bool:
        return self.run_ is not None and not self.run_.done.is_set()

    @property
    def selected(self) -> int | None:
        index = self.query_one("#stages", ListView).index
        return index if index is not None and index < len(self.pipeline.stages) else None

    # -- typing ------------------------------------------------------------------------------

    def typing_box(self) -> TextArea:
        return self.query_one("#input", TextArea)

    def action_focus_input(self) -> None:
        focus_at_end(self, self.typing_box())

    # -- stage editing -----------------------------------------------------------------------

    def action_add(self) -> None:
        def added(tool: str | None) -> None:
            if tool:
                at = (self.selected + 1) if self.selected is not None else None
                added_at = at if at is not None else len(self.pipeline.stages)
                self.set_pipeline(self.pipeline.add(Stage(tool), at), added_at)

        self.app.push_screen(PickTool(), added)

    def action_remove(self) -> None:
        if self.selected is not None:
            self.set_pipeline(self.pipeline.remove(self.selected), self.selected)

    def action_move(self, delta: int) -> None:
        if self.selected is not None:
            self.set_pipeline(self.pipeline.move(self.selected, delta), self.selected + delta)

    def action_configure(self) -> None:
        index = self.selected
        if index is None:
            return

        def configured(stage: Stage | None) -> None:
            if stage is not None:
                self.set_pipeline(self.pipeline.replace(index, stage), index)

        try:
            form = StageForm(self.pipeline.stages[index])
        except LookupError as exc:
            self.notify(str(exc), severity="error")
            return
        self.app.push_screen(form, configured)

    @on(ListView.Selected, "#stages")
    def stage_chosen(self) -> None:
        self.action_configure()

    # -- files -------------------------------------------------------------------------------

    def action_save(self) -> None:
        def save(path: str | None) -> None:
            if path:
                try:
                    self.pipeline.save(path)
                except OSError as exc:
                    self.notify(f"cannot save {path}: {exc.strerror}", severity="error")
                    return
                self.path = path
                self.notify(f"saved {path}")

        self.app.push_screen(AskPath("Save the pipeline to", self.path or "pipeline.json"), save)

    def action_load(self) -> None:
        def load(path: str | None) -> None:
            if path:
                try:
                    self.set_pipeline(Pipeline.load(path), 0)
                except LmpipeError as exc:
                    self.notify(str(exc), severity="error")
                    return
                self.path = path

        self.app.push_screen(AskPath("Load a pipeline from", self.path or ""), load)

    def action_input_file(self) -> None:
        def read(path: str | None) -> None:
            if path:
                try:
                    text = Path(path).expanduser().read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    self.notify(f"cannot read {path}: {exc}", severity="error")
                    return
                self.query_one("#input", TextArea).text = text

        self.app.push_screen(AskPath("Read the input from a JSONL or text file"), read)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.pipeline.shell())
        self.notify("command line copied")

    # -- running -----------------------------------------------------------------------------

    def action_run(self) -> None:
        if self.running:
            self.notify("already running", severity="warning")
            return
        if not self.pipeline.stages:
            self.notify("add a stage first (Ctrl+N)", severity="warning")
            return
        for meter in self.query(StageMeter):
            meter.show(StageSnapshot(meter.index, self.pipeline.stages[meter.index].tool))
        self.query_one("#output", OutputView).reset(self.pipeline.stages[-1].out_field())
        self.last_output, self.last_codes = b"", ()
        data = self.query_one("#input", TextArea).text.encode("utf-8")
        self.run_ = PipelineRun(self.pipeline, data, on_update=lambda s: self.post_message(StageUpdated(s)),
                                on_output=lambda line: self.post_message(OutputLine(line)),
                                on_finished=lambda r: self.post_message(RunFinished(r)))
        self.sub_title = "running"
        self.run_.start()

    def action_toggle_raw(self) -> None:
        self.query_one("#output", OutputView).toggle_raw()

    def action_cancel(self) -> None:
        if self.running and self.run_ is not None:
            self.sub_title = "cancelling"
            self._cancel(self.run_)

    def _cancel(self, run: PipelineRun) -> None:
        self.run_worker(run.cancel, thread=True, exclusive=True, group="cancel")

    def on_stage_updated(self, message: StageUpdated) -> None:
        for meter in self.query(StageMeter):
            if meter.index == message.snapshot.index:
                meter.show(message.snapshot)

    def on_output_line(self, message: OutputLine) -> None:
        self.query_one("#output", OutputView).add(message.line)

    def on_run_finished(self, message: RunFinished) -> None:
        result = message.result
        self.last_output, self.last_codes = result.output, result.codes
        self.sub_title = "cancelled" if result.cancelled else f"finished, exit {result.exit_code}"
        if self.run_ is not None:
            for snapshot in self.run_.snapshots():
                self.on_stage_updated(StageUpdated(snapshot))
        if result.exit_code and not result.cancelled:
            failed = [i + 1 for i, c in enumerate(result.codes) if c]
            self.notify(f"stage {', '.join(map(str, failed))} failed (exit {result.exit_code})", severity="error")

    def on_unmount(self) -> None:
        if self.running and self.run_ is not None:
            self.run_.cancel(grace_s=1.0)
