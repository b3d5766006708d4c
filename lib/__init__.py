"""lmpipe: local language and vision models as small Unix tools over JSON Lines, and the library
they are built on.

    import lmpipe
    model = lmpipe.load()                       # the embedded smollm2, or any --model value
    for event in model.generate("Say hi."):     # lmpipe.Token events, then one lmpipe.Completion
        ...
    result = model.complete("Say hi.")          # text, finish_reason, stats

Importing lmpipe is cheap: the model code (torch, transformers) loads with the first model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    # `as` marks them as re-exports: __getattr__ gives them at run time, these give them to type checkers.
    from .api import Completion as Completion
    from .api import Event as Event
    from .api import Model as Model
    from .api import Result as Result
    from .api import Token as Token

_API = ("Completion", "Event", "Model", "Result", "Token")


def load(model: str | None = None, **settings: Any) -> Model:
    """Load a model for generation (see lmpipe.api.load for the settings)."""
    from .api import load as load_model

    return load_model(model, **settings)


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'lmpipe' has no attribute {name!r}")


__all__ = ["__version__", "load", *_API]
