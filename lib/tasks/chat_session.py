"""lm-chat's task: a conversation with memory, typed at a terminal or read from a pipe.

The conversation, its commands and its file formats live here, apart from the terminal, so a
script (and a test) drives exactly what a person at the prompt does. Each reply is one record
through lm-generate's own task, in-process or through --server: the same prompt from the same
`messages`, the same generation loop, the same stats and manifest. So a saved conversation fed
to lm-generate gives the reply lm-chat gives, and in a pipe each turn's transcript line is the
record lm-generate writes for that turn's `messages`.

Ctrl-C during a reply stops it as Ollama does: the question stays in the conversation, the part
of the reply shown so far does not.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import IO, Any

from ..backends.generate import GenerateSettings, GenerateTask
from ..backends.remote import RemoteGenerateTask, ServerClient, ServerSettings
from ..chat.conversation import Conversation
from ..chat.prompts import text_of
from ..chat.reasoning import ReasoningStream
from ..engine.events import Token
from ..errors import LmpipeError, RecordError, UsageError
from ..models.loading import ModelSettings, load
from ..records.jsonl import Item, RecordWriter, error_record, failure_text, parse_line
from ..records.pipe import EXIT_OK, finish, say
from ..records.runner import Finished, Streamed, Summary

TOOL = "lm-chat"

HELP = """\
Commands:
  /system TEXT     set the system prompt for the next turns (/system alone shows it)
  /set NAME VALUE  set a sampling setting: temperature, top_p, top_k, min_p, repetition_penalty,
                   seed, max_new_tokens, stop (/set alone shows them)
  /save FILE       write the conversation as one JSONL record {"messages": [...]} (lm-generate reads it)
  /load FILE       continue a saved conversation (lm-chat's /save, lm-dash's Ctrl-S, an lm-generate record)
  /clear           forget the turns so far (the system prompt stays)
  /help, /?        this help
  /bye, /exit      leave (so does Ctrl-D)
Write \"\"\" to begin and end a message of several lines. Ctrl-C stops a reply; the question stays."""

# What /set may change: Sampling's fields, each with the type its value is read as.
SETTABLE: dict[str, type] = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float, "repetition_penalty": float,
    "seed": int, "max_new_tokens": int, "stop": str,
}


@dataclass(frozen=True)
class ChatRun:
    """One lm-chat run: the model (or server), how it samples, and the conversation it starts from."""

    settings: GenerateSettings = field(default_factory=GenerateSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    server: str | None = None  # chat through this server instead of in-process
    api_key: str | None = None  # sent to --server as `Authorization: Bearer KEY`
    no_server: bool = False  # never through a server, not even a warm one recorded in lmpipe's home
    system: str = ""  # the system prompt to start with
    load: str | None = None  # a saved conversation to continue
    quiet: bool = False  # at a terminal, no stats line


@dataclass(frozen=True)
class ChatInput:
    """A message or a command, as typed: one line, or the lines of a \"\"\" block."""

    text: str
    line: int  # where it began
    block: bool = False

    @property
    def command(self) -> bool:
        return not self.block and self.text.startswith("/")


class InputAssembler:
    """Lines in, entries out. As in Ollama, a line that begins with \"\"\" opens a message of
    several lines and one that ends with \"\"\" closes it; the text between is the message, trimmed.
    A line starting with / outside a block is a command; a blank line is nothing."""

    QUOTES = '"""'

    def __init__(self) -> None:
        self.lines: list[str] | None = None  # the open block's lines
        self.start = 0

    @property
    def open(self) -> bool:
        return self.lines is not None

    def feed(self, line: str, number: int) -> ChatInput | None:
        if self.lines is None:
            text = line.strip()
            if not text.startswith(self.QUOTES):
                return ChatInput(text, number) if text else None
            rest = text[len(self.QUOTES):]
            if len(rest) >= len(self.QUOTES) and rest.endswith(self.QUOTES):
                return self._entry([rest[:-len(self.QUOTES)]], number)
            self.lines, self.start = [rest], number
            return None
        if line.rstrip().endswith(self.QUOTES):
            lines, self.lines = self.lines + [line.rstrip()[:-len(self.QUOTES)]], None
            return self._entry(lines, self.start)
        self.lines.append(line)
        return None

    def drop(self) -> None:
        """Forget an open block (Ctrl-C at the prompt)."""
        self.lines = None

    def finish(self) -> ChatInput | None:
        """The end of input: an open block is the message as it stands."""
        lines, self.lines = self.lines, None
        return self._entry(lines, self.start) if lines is not None else None

    @staticmethod
    def _entry(lines: list[str], number: int) -> ChatInput | None:
        text = "\n".join(lines).strip()
        return ChatInput(text, number, block=True) if text else None


class ChatSession:
    """The conversation and the task that answers it; what each message and command does."""

    def __init__(self, build: Callable[[GenerateSettings, Any], Any], settings: GenerateSettings,
                 conversation: Conversation | None = None):
        """`build(settings, previous_task)`: lm-generate's task (GenerateTask or RemoteGenerateTask)
        with these settings; called again when /set changes them."""
        self.build = build
        self.task = build(settings, None)
        self.conversation = conversation or Conversation()

    @property
    def settings(self) -> GenerateSettings:
        return self.task.settings  # with the seed drawn, when none was given

    def reply(self, text: str, line: int = 0) -> Generator[Token | Finished, None, None]:
        """Ask `text`: the question joins the conversation, the reply's tokens stream, and the
        record lm-generate writes for the conversation so far comes last. A finished reply joins
        the conversation; a failed one takes its question back out (a prompt too long for the
        model would fail every later turn); a stopped one (Ctrl-C, the iterator closed) leaves
        the question in and the reply out."""
        self.conversation.turns.append({"role": "user", "content": text})
        item = Item(line, self.conversation.record())
        for out in self._answer(item):
            if isinstance(out, Streamed):
                yield out.event
                continue
            if out.failed:
                self.conversation.turns.pop()
            else:
                self.conversation.turns.append({"role": "assistant", "content": out.record[self.settings.out] or ""})
            yield out

    def _answer(self, item: Item) -> Iterator[Finished | Streamed]:
        if isinstance(self.task, RemoteGenerateTask):
            # One request in this thread (process() would run it in a pool, whose exit waits
            # for the server's whole answer after a Ctrl-C).
            yield self.task.one(item)
        else:
            yield from self.task.process([item])

    def command(self, line: str) -> str | None:
        """Run a /command; the text to show, or None to leave. A bad one raises UsageError."""
        name, _, args = line.partition(" ")
        args = args.strip()
        name = name.lower()
        if name in ("/help", "/?"):
            return HELP
        if name in ("/bye", "/exit"):
            return None
        if name == "/system":
            if not args:
                return self.conversation.system or "(no system prompt)"
            self.conversation.system = args
            return "Set system prompt."
        if name == "/set":
            return self.set(args)
        if name == "/clear":
            self.conversation.turns = []
            return "Cleared the conversation."
        if name in ("/save", "/load") and not args:
            raise UsageError(f"{name} needs a FILE")
        if name == "/save":
            self.conversation.save(args)
            return f"Saved {len(self.conversation.messages())} messages to {args}."
        if name == "/load":
            self.conversation = Conversation.load(args)
            return f"Loaded {len(self.conversation.messages())} messages from {args}."
        raise UsageError(f"unknown command {name} (/help lists them)")

    def set(self, args: str) -> str:
        """/set NAME VALUE: a new task with that sampling setting; /set alone: the settings."""
        sampling = self.settings.sampling
        if not args:
            return "\n".join(f"{key} {getattr(sampling, key)!r}" for key in SETTABLE)
        name, _, value = args.partition(" ")
        key, value = name.replace("-", "_").lower(), value.strip()
        if key not in SETTABLE:
            raise UsageError(f"/set {name}: not a setting ({', '.join(SETTABLE)})")
        kind = SETTABLE[key]
        if key == "stop":
            new: Any = (value,) if value else ()  # /set stop alone: no stop string
        elif not value:
            raise UsageError(f"/set {key} needs a value")
        else:
            try:
                new = kind(value)
            except ValueError:
                wanted = "a whole number" if kind is int else "a number"
                raise UsageError(f"/set {key}: {value!r} is not {wanted}") from None
        changed = replace(sampling, **{key: new})  # Sampling checks the value
        self.task = self.build(replace(self.settings, sampling=changed), self.task)
        return f"Set {key} to {new!r}."


def open_session(r: ChatRun) -> ChatSession:
    """The conversation to start from (a bad file fails before the model loads), then the model or server."""
    conversation = Conversation.load(r.load) if r.load else Conversation()
    if r.system:
        conversation.system = r.system
    server, key, name = (r.server if not r.no_server else None), r.api_key, r.model.model
    in_process = r.settings.prompt.chat_template is not None or r.settings.sampling.reasoning_budget is not None
    if r.model.adapters and server:
        raise UsageError("--adapter applies in-process (drop --server, or serve it with lm-serve --lora)")
    # a running lm-serve holding this model, as lm-generate finds it
    if server is None and not r.no_server and not in_process:
        from ..backends import warm

        name = r.model.ref().id  # asked for by id: the server may serve several
        found = warm.find(warm.holds(name, r.model, r.settings.decoding))
        if found:
            server, key = found.url, found.token
            say("lm-chat", f"answering through the lm-serve running at {server} (--no-server: load the model here)")
    if server:
        client = ServerClient(ServerSettings(server, api_key=key))
        return ChatSession(lambda s, _old: RemoteGenerateTask(client, name, s), r.settings, conversation)
    lm = load(r.model)
    return ChatSession(lambda s, old: GenerateTask(lm, s, draft=old.draft if old else None), r.settings,
                       conversation)


def run(r: ChatRun, tty: bool) -> int:
    """lm-chat: at a terminal, a conversation; in a pipe, one message a line in, the transcript out."""
    session = open_session(r)
    if tty:
        import signal

        from ..paths import chat_history_file

        # Ctrl-C stops a reply. A program started in the background by a shell without job control
        # (a script, `cmd &`, some CI runners) inherits SIGINT ignored, and Python then leaves it so:
        # at a terminal lm-chat takes the key back.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from ..terminal.chat_console import ChatConsole

        return converse(session, ChatConsole(chat_history_file(), r.quiet))
    return transcribe(session, sys.stdin.buffer, sys.stdout.buffer)


def converse(session: ChatSession, console: Any) -> int:
    """The conversation at a terminal, until Ctrl-D or /bye (exit 0)."""
    lines = InputAssembler()
    number = 0
    while True:
        try:
            typed = console.read(more=lines.open)
        except EOFError:
            console.note("")
            return EXIT_OK
        except KeyboardInterrupt:
            lines.drop()
            console.note("\nUse Ctrl-D or /bye to leave.")
            continue
        number += 1
        entry = lines.feed(typed, number)
        if entry is None:
            continue
        if entry.command:
            try:
                said = session.command(entry.text)
            except LmpipeError as exc:
                console.error(str(exc))
                continue
            if said is None:
                return EXIT_OK
            console.note(said)
            continue
        thinking = ReasoningStream()
        try:
            with closing(session.reply(entry.text, entry.line)) as events:
                for event in events:
                    if isinstance(event, Token):
                        for reasoning, text in thinking.feed(event.text):
                            console.piece(text, reasoning)
                        continue
                    for reasoning, text in thinking.flush():
                        console.piece(text, reasoning)
                    console.finished(event.record, event.failed, session.settings.out)
        except KeyboardInterrupt:
            console.stopped()
        except LmpipeError as exc:  # the server went away: the conversation goes on
            console.stopped()
            console.error(str(exc))


def transcribe(session: ChatSession, source: IO[bytes], out: IO[bytes]) -> int:
    """In a pipe: each line a message (or a command, or a \"\"\" block), each reply written as the
    record lm-generate writes for the conversation so far; failures are error records with their
    line. Command output goes to stderr, so stdout stays JSONL."""
    writer, summary, lines = RecordWriter(out), Summary(), InputAssembler()

    def failed(record: dict[str, Any]) -> None:
        writer.write(record, failed=True)
        summary.written += 1
        summary.failed += 1
        summary.failures.append(failure_text(record))

    def take(entry: ChatInput) -> bool:
        """Act on one entry; False to stop (/bye)."""
        summary.read += 1
        if entry.command:
            try:
                said = session.command(entry.text)
            except LmpipeError as exc:
                failed(error_record(Item(entry.line, {"text": entry.text}), str(exc)))
                return True
            if said is None:
                return False
            sys.stderr.write(said + "\n")
            return True
        for event in session.reply(entry.text, entry.line):
            if isinstance(event, Finished):
                if event.failed:
                    failed(event.record)
                else:
                    writer.write(event.record)
                    summary.written += 1
        return True

    for number, raw in enumerate(source, 1):
        if lines.open:
            text = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
        else:
            item = parse_line(raw, number)  # the JSONL contract: a line, or an object with `text`
            if item is None:
                continue
            try:
                if not item.ok:
                    raise RecordError(item.error or "bad line")
                text = text_of(item.record or {}, "text")
            except RecordError as exc:
                summary.read += 1
                failed(error_record(item, str(exc)))
                continue
        entry = lines.feed(text, number)
        if entry is not None and not take(entry):
            return finish(TOOL, summary)
    entry = lines.finish()
    if entry is not None:
        take(entry)
    return finish(TOOL, summary)
