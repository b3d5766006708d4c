"""Typing is typing: on a screen with a typing box, every printable key and every paste typed while
no field has the focus lands in that box, whole and in order, however fast it comes."""

from __future__ import annotations

from textual import events
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Select, TextArea

# Widgets whose own keys mean something (a space ticks a checkbox, a letter searches a select):
# typing there stays there.
FIELDS = (Input, TextArea, Checkbox, Select)


class TypingBox:
    """A screen that takes typing into one box when no field has the focus."""

    def typing_box(self) -> Input | TextArea | None:
        """The box that takes typing now (None: let the key or paste go where Textual sends it)."""
        raise NotImplementedError


def typing_target(screen: Screen, event: events.Key | events.Paste) -> Input | TextArea | None:
    """The box this key or paste belongs in when the focused widget would not take it."""
    if isinstance(event, events.Key) and not event.is_printable:
        return None  # Enter, Tab, arrows and chords keep their meaning where the focus is
    if not isinstance(screen, TypingBox):
        return None
    focused = screen.focused
    if focused is not None and any(isinstance(w, FIELDS) for w in focused.ancestors_with_self):
        return None
    try:
        box = screen.typing_box()
    except NoMatches:  # the screen is still being built: the key goes where Textual sends it
        return None
    return box if box is not None and box.focusable else None


def focus_at_end(screen: Screen, box: Widget) -> None:
    """Focus the box with its cursor after what it holds: typing there appends.

    The cursor moves in the box's own queue, after its Focus handler (an Input selects all of its
    text on focus, which the next key would replace) and before the key or paste that follows.
    """
    screen.set_focus(box)
    box.call_later(_cursor_to_end, box)


def _cursor_to_end(box: Widget) -> None:
    if isinstance(box, TextArea):
        box.move_cursor(box.document.end)
    elif isinstance(box, Input):
        box.cursor_position = len(box.value)
