"""The models screen: what running lm-serve processes hold, the cache as lm-cache-ls sees it,
details from lm-model-info, deletion."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from ..cache_tools import CachedModel, ToolFailed, ToolMissing, human_size, list_models, model_info, remove_model
from ..messages import ModelInfoReady, ModelsFailed, ModelsListed, ServedListed
from ..served import served_models
from .dialogs import Confirm

SERVED_REFRESH_S = 5.0  # the served models' states (loaded, unloading in ...) change on their own


class ModelsScreen(Screen):
    TITLE = "Models"
    BINDINGS = [
        Binding("ctrl+r", "refresh", "Refresh"),
        Binding("i", "info", "Details"),
        Binding("d,delete", "delete", "Delete"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.models: list[CachedModel] = []

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="served-table", cursor_type="none", zebra_stripes=True)
        yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="models-total")
        yield Static("", id="model-info")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#models-table").border_title = "Cached models (largest first)"
        self.query_one("#served-table").border_title = "Served (lm-serve)"
        served = self.query_one("#served-table", DataTable)
        for label, width in (("server", 22), ("model", 30), ("state", 24)):
            served.add_column(label, width=width)
        self.set_interval(SERVED_REFRESH_S, self.load_served)
        self.query_one("#model-info").border_title = "Details"
        table = self.query_one("#models-table", DataTable)
        for label, width in (("model", 30), ("kind", 8), ("size", 9), ("revs", 4), ("files", 5), ("accessed", 10)):
            table.add_column(label, width=width)
        self.action_refresh()
        self.query_one("#models-table").focus()

    def action_refresh(self) -> None:
        self.query_one("#models-total", Static).update("reading the cache…")
        self.load_models()
        self.load_served()

    @work(thread=True, exclusive=True, group="served")
    def load_served(self) -> None:
        try:
            self.post_message(ServedListed(served_models()))
        except OSError as exc:  # lmpipe's home unreadable: said where the servers would be
            self.post_message(ServedListed([], f"{exc.strerror or exc}"))

    def on_served_listed(self, message: ServedListed) -> None:
        table = self.query_one("#served-table", DataTable)
        table.clear()
        for m in message.models:
            table.add_row(m.server.removeprefix("http://"), Text(m.id), m.state)
        table.border_title = ("Served (lm-serve)" if message.models else
                              f"Served (lm-serve): {message.error or 'none running'}")

    @work(thread=True, exclusive=True, group="models")
    def load_models(self) -> None:
        try:
            self.post_message(ModelsListed(list_models()))
        except (ToolMissing, ToolFailed, OSError, ValueError) as exc:
            self.post_message(ModelsFailed(str(exc)))

    def on_models_listed(self, message: ModelsListed) -> None:
        self.models = message.models
        table = self.query_one("#models-table", DataTable)
        table.clear()
        for m in self.models:
            table.add_row(Text(m.id), m.kind, Text(human_size(m.size_bytes), justify="right"),
                          str(m.revisions), str(m.files), str(m.last_accessed or "")[:10])
        total = sum(m.size_bytes for m in self.models)
        self.query_one("#models-total", Static).update(
            Text(f"{len(self.models)} models · total {human_size(total)}", style="bold"))

    def on_models_failed(self, message: ModelsFailed) -> None:
        self.query_one("#models-total", Static).update(Text(message.error, style="bold red"))

    @property
    def current(self) -> CachedModel | None:
        row = self.query_one("#models-table", DataTable).cursor_row
        return self.models[row] if self.models and 0 <= row < len(self.models) else None

    def on_data_table_row_selected(self) -> None:
        self.action_info()

    def action_info(self) -> None:
        if self.current is not None:
            self.query_one("#model-info", Static).update("reading…")
            self.load_info(self.current)

    @work(thread=True, exclusive=True, group="info")
    def load_info(self, model: CachedModel) -> None:
        try:
            self.post_message(ModelInfoReady(model_info(model)))
        except (ToolMissing, ToolFailed, OSError, ValueError) as exc:
            self.post_message(ModelsFailed(str(exc)))

    def on_model_info_ready(self, message: ModelInfoReady) -> None:
        text = Text()
        for key, value in message.info.items():
            if isinstance(value, (dict, list)):
                parts = (f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else map(str, value)
                value = ", ".join(parts)
            text.append(f"{key}: ", style="bold")
            text.append(f"{value}\n")
        self.query_one("#model-info", Static).update(text)

    def action_delete(self) -> None:
        model = self.current
        if model is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.delete_model(model)

        self.app.push_screen(Confirm(f"Delete {model.id} ({human_size(model.size_bytes)}) from the cache?"), answered)

    @work(thread=True, exclusive=True, group="models")
    def delete_model(self, model: CachedModel) -> None:
        try:
            remove_model(model)
            self.app.call_from_thread(self.notify, f"deleted {model.id}")
            self.post_message(ModelsListed(list_models()))
        except (ToolMissing, ToolFailed, OSError, ValueError) as exc:
            self.post_message(ModelsFailed(str(exc)))
