"""A multi-turn chat as lm-chat and the dashboard keep it, and the one file format both save and load.

A saved conversation is a JSONL record `{"messages": [...]}`, the input lm-generate reads: the
system prompt (when there is one) first, then the turns. The dashboard appends one such record
per save to its file; lm-chat writes one. Loading takes the file's last record, and a record
lm-generate (or lm-chat in a pipe) wrote, with its reply in `generated`, loads with that reply
as the last turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecordError, UsageError
from ..records.jsonl import encode, parse_line
from .prompts import PromptSettings, messages_of


@dataclass
class Conversation:
    """The system prompt and the turns so far: what goes to the model each turn."""

    system: str = ""
    turns: list[dict[str, Any]] = field(default_factory=list)  # content: text, or OpenAI's parts with images

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + list(self.turns)

    def record(self) -> dict[str, Any]:
        """One JSONL record, `{"messages": [...]}`, as lm-generate accepts it."""
        return {"messages": self.messages()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Conversation:
        """The conversation a record holds: its `messages` (checked as lm-generate checks them),
        plus its `generated` reply when it has one."""
        if "messages" not in record:
            raise RecordError("the record has no `messages`")
        messages = [dict(m) for m in messages_of(record, PromptSettings())]
        system = ""
        if messages[0]["role"] == "system":
            system = messages.pop(0).get("content", "")
        if isinstance(record.get("generated"), str):
            messages.append({"role": "assistant", "content": record["generated"]})
        return cls(system, messages)

    def save(self, path: str | Path) -> None:
        """Write the conversation to `path` as one JSONL record (replacing the file)."""
        try:
            Path(path).expanduser().write_bytes(encode(self.record()))
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Conversation:
        """The conversation of the last record of a JSONL file (lm-chat's /save, the dashboard's Ctrl-S)."""
        try:
            lines = Path(path).expanduser().read_bytes().splitlines()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        items = [item for n, raw in enumerate(lines, 1) if (item := parse_line(raw, n)) is not None]
        if not items:
            raise UsageError(f"{path} holds no record")
        last = items[-1]
        if last.record is None:
            raise UsageError(f"{path}, line {last.line}: {last.error}")
        try:
            return cls.from_record(last.record)
        except RecordError as exc:
            raise UsageError(f"{path}, line {last.line}: {exc}") from None
