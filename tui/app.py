"""lm-dash: the Textual dashboard. `create_app()` is shared by the entry point and the tests."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from textual import events
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from .pipeline import Pipeline
from .pool import ChatSettings, ModelPool
from .screens.chat import ChatScreen
from .screens.models import ModelsScreen
from .screens.pipeline import PipelineScreen
from .screens.tokens import TokensScreen
from .typing import focus_at_end, typing_target

SCREENS = ("pipeline", "chat", "tokens", "models")


class LmDash(App):
    TITLE = "lm-dash"
    CSS_PATH = "lmpipe.tcss"
    BINDINGS = [
        Binding("f1", "switch_mode('pipeline')", "Pipe"),
        Binding("f2", "switch_mode('chat')", "Chat"),
        Binding("f3", "switch_mode('tokens')", "Tokens"),
        Binding("f4", "switch_mode('models')", "Models"),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, pipeline: Pipeline | None = None, input_text: str = "", pipeline_path: str | None = None,
                 model: str = "smollm2", screen: str = "pipeline", pool: ModelPool | None = None,
                 chat: ChatSettings = ChatSettings()):
        self.pool = pool or ModelPool()
        self.pipeline_screen = PipelineScreen(pipeline, input_text, pipeline_path)
        # textual reads MODES per app; these screens hold this app's own state, so they are built here.
        self.MODES = {  # type: ignore[misc]
            "pipeline": lambda: self.pipeline_screen,
            "chat": lambda: ChatScreen(self.pool, model, chat),
            "tokens": lambda: TokensScreen(self.pool, model),
            "models": ModelsScreen,
        }
        super().__init__()
        self.first_screen = screen

    def on_mount(self) -> None:
        self.switch_mode(self.first_screen)

    async def on_event(self, event: events.Event) -> None:
        """Keys and pastes from the terminal come through here one at a time, in the order typed,
        before Textual sends each to the focused widget: a printable key or a paste that belongs in
        the screen's typing box gets the box focused first, so that it and every one after it go
        straight there. (Moving the focus later, from a handler the key reached through another
        widget, lost the keys already on their way to that widget.)"""
        if isinstance(event, (events.Key, events.Paste)) and not event.is_forwarded:
            box = typing_target(self.screen, event)
            if box is not None:
                focus_at_end(self.screen, box)
        await super().on_event(event)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every binding of the screen and the app is also a command in the palette."""
        yield from super().get_system_commands(screen)
        seen: set[str] = set()
        for active in screen.active_bindings.values():
            binding = active.binding
            if not binding.description or binding.action in seen or binding.action == "quit":
                continue
            seen.add(binding.action)
            keys = binding.key_display or binding.key
            yield SystemCommand(binding.description, f"{type(active.node).__name__}: {keys}",
                                partial(self.run_action, binding.action, active.node))

    @property
    def last_output(self) -> bytes:
        return self.pipeline_screen.last_output


def create_app(**kwargs) -> LmDash:
    return LmDash(**kwargs)
