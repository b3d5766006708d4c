"""The dashboard's messages: what workers and pipeline threads tell the interface.

Messages that flood (a stage's counters, a streaming reply) replace their pending predecessor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message

from .live import RunResult, StageSnapshot
from .pool import ContextFill, Reply


@dataclass
class StageUpdated(Message):
    snapshot: StageSnapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, StageUpdated) and message.snapshot.index == self.snapshot.index


@dataclass
class OutputLine(Message):
    line: bytes


@dataclass
class RunFinished(Message):
    result: RunResult


@dataclass
class ReplyStreaming(Message):
    text: str
    tokens: int

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ReplyStreaming)


@dataclass
class ContextFilled(Message):
    """The chat's prompt is tokenized: how much of the context it takes."""

    fill: ContextFill


@dataclass
class ReplyFinished(Message):
    reply: Reply


@dataclass
class ReplyFailed(Message):
    error: str


@dataclass
class TokensReady(Message):
    encoding: dict[str, Any]


@dataclass
class ProbsReady(Message):
    tokens: list[Any]
    texts: list[str]


@dataclass
class TokensFailed(Message):
    error: str


@dataclass
class ModelsListed(Message):
    models: list[Any]


@dataclass
class ServedListed(Message):
    models: list[Any]  # lmpipe.tui.served.ServedModel
    error: str | None = None  # the servers could not be listed: why


@dataclass
class ModelInfoReady(Message):
    info: dict[str, Any]


@dataclass
class ModelsFailed(Message):
    error: str
