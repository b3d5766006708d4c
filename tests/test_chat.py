"""lm-chat: a conversation at a real terminal (pexpect), its /save read by lm-generate, a scripted
chat in a pipe; and the conversation logic underneath, without a model."""

from __future__ import annotations

import os
import re
from dataclasses import replace

import orjson
import pexpect
import pytest
from conftest import BIN, jsonl, run_tool

from lmpipe.backends.generate import GenerateSettings
from lmpipe.chat.conversation import Conversation
from lmpipe.chat.reasoning import ReasoningStream
from lmpipe.engine.events import Token
from lmpipe.errors import UsageError
from lmpipe.records.runner import Finished, Streamed
from lmpipe.tasks.chat_session import ChatInput, ChatSession, InputAssembler, transcribe

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STATS = re.compile(r"^(\d+) in · (\d+) out · ttft \d+ ms · [\d.]+ tok/s · [\d.]+ s · (\w+)$")
TIMES = ("ttft_s", "tokens_per_s", "total_s")  # measured, so never the same twice


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


# The conversation logic, with a task that answers in upper case (no model).

class ShoutTask:
    """lm-generate's task contract: streams the last question back, then the record, in upper case."""

    def __init__(self, settings: GenerateSettings, fail: bool = False):
        self.settings = replace(settings, sampling=settings.sampling.with_seed())
        self.fail = fail

    def process(self, batch):
        item = batch[0]
        question = item.record["messages"][-1]["content"]
        for ch in question:
            yield Streamed(item, Token(0, 0, ch.upper(), 0.0))
        if self.fail:
            yield Finished(item, {**item.record, "error": "too long", "line": item.line}, failed=True)
        else:
            yield Finished(item, {**item.record, "generated": question.upper(), "stats": {}})


def shouting(conversation: Conversation | None = None, fail: bool = False) -> ChatSession:
    return ChatSession(lambda s, _old: ShoutTask(s, fail), GenerateSettings(), conversation)


def test_each_reply_sees_the_conversation_so_far_and_joins_it():
    session = shouting(Conversation(system="Be loud."))
    first = list(session.reply("hi", 1))
    assert [e.text for e in first[:-1]] == ["H", "I"] and first[-1].record["generated"] == "HI"
    second = list(session.reply("again", 2))[-1].record
    assert second["messages"] == [{"role": "system", "content": "Be loud."}, user("hi"), assistant("HI"), user("again")]
    assert session.conversation.turns == [user("hi"), assistant("HI"), user("again"), assistant("AGAIN")]


def test_a_stopped_reply_keeps_the_question_and_drops_the_partial_reply_as_ollama_does():
    session = shouting()
    list(session.reply("hi"))
    events = session.reply("stop me")
    assert next(events).text == "S"
    events.close()  # what Ctrl-C does at the terminal
    assert session.conversation.turns == [user("hi"), assistant("HI"), user("stop me")]


def test_a_failed_reply_takes_its_question_back_out():
    session = shouting(Conversation(turns=[user("a"), assistant("b")]), fail=True)
    assert list(session.reply("too long"))[-1].failed
    assert session.conversation.turns == [user("a"), assistant("b")]


def test_commands_change_the_system_prompt_settings_and_conversation(tmp_path):
    session = shouting()
    list(session.reply("hi"))
    assert session.command("/system") == "(no system prompt)"
    assert session.command("/system You are terse.") == "Set system prompt."
    assert list(session.reply("next"))[-1].record["messages"][0] == {"role": "system", "content": "You are terse."}
    before = session.task
    assert session.command("/set temperature 0.7") == "Set temperature to 0.7."
    assert session.command("/set top-k 5") == "Set top_k to 5."
    assert session.command("/set stop END") == "Set stop to ('END',)."
    assert session.task is not before
    s = session.settings.sampling
    assert (s.temperature, s.top_k, s.stop, s.seed) == (0.7, 5, ("END",), before.settings.sampling.seed)
    assert "temperature 0.7\ntop_p 1.0\ntop_k 5" in session.command("/set")
    for bad, why in [("/set temperature hot", "/set temperature: 'hot' is not a number"),
                     ("/set top_k 1.5", "/set top_k: '1.5' is not a whole number"),
                     ("/set temperature -1", "--temperature must be 0 (greedy) or more"),
                     ("/set beams 4", "/set beams: not a setting"),
                     ("/set seed", "/set seed needs a value"),
                     ("/save", "/save needs a FILE"),
                     ("/frobnicate", "unknown command /frobnicate")]:
        with pytest.raises(UsageError, match=re.escape(why)):
            session.command(bad)
    assert session.settings.sampling.temperature == 0.7  # a bad /set changes nothing
    path = tmp_path / "chat.jsonl"
    assert session.command(f"/save {path}") == f"Saved 5 messages to {path}."
    assert session.command("/clear") == "Cleared the conversation."
    assert session.conversation.messages() == [{"role": "system", "content": "You are terse."}]
    assert session.command(f"/load {path}") == f"Loaded 5 messages from {path}."
    assert session.conversation.turns == [user("hi"), assistant("HI"), user("next"), assistant("NEXT")]
    assert "/system TEXT" in session.command("/help") and session.command("/?") == session.command("/help")
    assert session.command("/bye") is None and session.command("/exit") is None


def test_save_writes_one_record_lm_generate_reads_and_load_takes_what_the_tools_write(tmp_path):
    conversation = Conversation("Be brief.", [user("hi"), assistant("hello")])
    path = tmp_path / "saved.jsonl"
    conversation.save(path)
    assert path.read_bytes() == orjson.dumps({"messages": [{"role": "system", "content": "Be brief."}, user("hi"),
                                                           assistant("hello")]}) + b"\n"
    assert Conversation.load(path) == conversation
    # The dashboard appends a record per save: the last is the conversation.
    dash = tmp_path / "dash.jsonl"
    dash.write_bytes(b"".join(orjson.dumps({"messages": [user(t)]}) + b"\n" for t in ("old", "new")) + b"\n")
    assert Conversation.load(dash) == Conversation("", [user("new")])
    # lm-generate's output record (and lm-chat's transcript line): its reply is the last turn.
    generated = tmp_path / "generated.jsonl"
    generated.write_bytes(orjson.dumps({"messages": [user("q")], "generated": "a", "stats": {}}) + b"\n")
    assert Conversation.load(generated) == Conversation("", [user("q"), assistant("a")])
    for content, why in [(b"", "holds no record"), (b'{"text": "hi"}\n', "line 1: the record has no `messages`"),
                         (b'{"messages": [{"role": "robot"}]}\n', "line 1: bad message"),
                         (b'{"messages": broken\n', "line 1: invalid JSON")]:
        path.write_bytes(content)
        with pytest.raises(UsageError, match=re.escape(why)):
            Conversation.load(path)
    with pytest.raises(UsageError, match="cannot read"):
        Conversation.load(tmp_path / "missing.jsonl")


def test_triple_quotes_make_one_message_of_several_lines_as_in_ollama():
    lines = InputAssembler()
    got = []
    for n, line in enumerate(['"""first', "/not a command", "", 'last"""', "  /set seed 1  ", "", '"""one line"""',
                              '"""', "tail"], 1):
        if (entry := lines.feed(line, n)) is not None:
            got.append(entry)
        assert lines.open == (n in (1, 2, 3, 8, 9))
    assert got == [ChatInput("first\n/not a command\n\nlast", 1, block=True), ChatInput("/set seed 1", 5),
                   ChatInput("one line", 7, block=True)]
    assert [e.command for e in got] == [False, True, False]
    assert lines.finish() == ChatInput("tail", 8, block=True) and not lines.open


def test_reasoning_streams_apart_even_with_tags_split_across_tokens():
    stream = ReasoningStream()
    pieces = []
    for text in ["<th", "ink>Let me", " see.</", "think>Paris", " it is", "<"]:
        pieces += stream.feed(text)
    pieces += stream.flush()
    assert pieces == [(True, "Let me"), (True, " see."), (False, "Paris"), (False, " it is"), (False, "<")]


def test_a_pipe_gets_the_transcript_and_error_records_with_their_lines():
    import io

    session = shouting()
    out = io.BytesIO()
    source = io.BytesIO(b'hi\n{"text": "as json"}\n/nope\n{"text": 1}\n{broken\n"""\ntwo\nlines\n"""\n/bye\nnot read\n')
    assert transcribe(session, source, out) == 1
    records = jsonl(out.getvalue())
    assert [r.get("generated") for r in records] == ["HI", "AS JSON", None, None, None, "TWO\nLINES"]
    assert [r.get("line") for r in records] == [None, None, 3, 4, 5, None]
    assert records[2]["error"].startswith("unknown command /nope")
    assert records[5]["messages"][-1] == user("two\nlines")


class ThinkingTask(ShoutTask):
    """Thinks first, in pieces that split the tags."""

    def process(self, batch):
        item = batch[0]
        for piece in ["<th", "ink>hm", "m</think>", "Hi", "!"]:
            yield Streamed(item, Token(0, 0, piece, 0.0))
        yield Finished(item, {**item.record, "generated": "Hi!", "reasoning": "hmm", "stats": {}})


class ScriptedConsole:
    """ChatConsole's part, typed from a list (KeyboardInterrupt where it says so), shown into a list."""

    def __init__(self, typed, interrupt_after_pieces=None):
        self.typed, self.shown = list(typed), []
        self.interrupt_after = interrupt_after_pieces

    def read(self, more=False):
        self.shown.append(("prompt", more))
        if not self.typed:
            raise EOFError
        line = self.typed.pop(0)
        if line is KeyboardInterrupt:
            raise KeyboardInterrupt
        return line

    def piece(self, text, reasoning):
        self.shown.append(("reasoning" if reasoning else "answer", text))
        pieces = sum(kind in ("reasoning", "answer") for kind, _ in self.shown)
        if pieces == self.interrupt_after:
            raise KeyboardInterrupt

    def finished(self, record, failed, field="generated"):
        self.shown.append(("finished", record[field]))

    def stopped(self):
        self.shown.append(("stopped", None))

    def note(self, text):
        self.shown.append(("note", text))

    def error(self, text):
        self.shown.append(("error", text))


def test_at_the_prompt_reasoning_streams_apart_commands_answer_and_ctrl_d_leaves_with_0():
    from lmpipe.tasks.chat_session import converse

    session = ChatSession(lambda s, _old: ThinkingTask(s), GenerateSettings())
    console = ScriptedConsole(["hello", '"""', "half a block", KeyboardInterrupt, "/system Be kind.", "/nope"])
    assert converse(session, console) == 0
    assert console.shown == [
        ("prompt", False), ("reasoning", "hm"), ("reasoning", "m"), ("answer", "Hi"), ("answer", "!"),
        ("finished", "Hi!"),
        ("prompt", False), ("prompt", True), ("prompt", True),  # the block, dropped by Ctrl-C
        ("note", "\nUse Ctrl-D or /bye to leave."),
        ("prompt", False), ("note", "Set system prompt."),
        ("prompt", False), ("error", "unknown command /nope (/help lists them)"),
        ("prompt", False), ("note", "")]
    assert session.conversation.turns == [user("hello"), assistant("Hi!")]


def test_ctrl_c_in_a_reply_returns_to_the_prompt_and_bye_leaves_with_0():
    from lmpipe.tasks.chat_session import converse

    session = shouting()
    console = ScriptedConsole(["stop me", "/bye", "never read"], interrupt_after_pieces=2)
    assert converse(session, console) == 0
    assert console.shown == [("prompt", False), ("answer", "S"), ("answer", "T"), ("stopped", None),
                             ("prompt", False)]
    assert session.conversation.turns == [user("stop me")]
    assert console.typed == ["never read"]


def test_the_terminal_shows_reasoning_dim_and_the_stats_line_unless_quiet():
    import io

    from lmpipe.terminal.chat_console import ChatConsole

    stats = {"input_tokens": 9, "output_tokens": 2, "ttft_s": 0.25, "tokens_per_s": 40.0, "total_s": 0.3,
             "finish_reason": "eos"}
    for quiet, color in ((False, True), (True, True), (False, False)):
        out, err = io.StringIO(), io.StringIO()
        console = ChatConsole(history=None, quiet=quiet, out=out, err=err, color=color)
        console.piece("hmm", True)
        console.piece("Hi", False)
        console.finished({"generated": "Hi", "stats": stats}, failed=False)
        console.piece("cut", False)
        console.stopped()
        console.finished({"error": "too long", "line": 3}, failed=True)
        dim, plain = "\x1b[2;3mhmm\x1b[0m", "hmm"
        assert out.getvalue() == (dim if color else plain) + "\nHi\ncut\n"
        line = "9 in · 2 out · ttft 250 ms · 40.0 tok/s · 0.30 s · eos"
        shown = ("" if quiet else (f"\x1b[2m{line}\x1b[0m\n" if color else f"{line}\n"))
        assert err.getvalue() == shown + ("\x1b[31mtoo long\x1b[0m\n" if color else "too long\n")


def test_a_bad_load_file_fails_before_the_model_loads(tmp_path):
    result = run_tool("lm-chat", "--load", str(tmp_path / "missing.jsonl"), input="hi\n")
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().startswith(f"lm-chat: error: cannot read {tmp_path / 'missing.jsonl'}")


# The real thing: the embedded model at a terminal, and in pipes.

@pytest.fixture(scope="module")
def tokenizer(embedded):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded)


def prompt_tokens(tokenizer, messages) -> int:
    """How many tokens transformers makes of the conversation's prompt: what `N in` must say."""
    return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"])


class Terminal:
    """lm-chat in a pseudo-terminal; each turn's output cleaned of escape codes."""

    def __init__(self, home, *args):
        env = {**os.environ, "LMPIPE_HOME": str(home), "TERM": "xterm"}
        self.child = pexpect.spawn(str(BIN / "lm-chat"), list(args), env=env, encoding="utf-8", timeout=600,
                                   dimensions=(24, 200))
        self.child.expect_exact(">>> ")

    def say(self, line: str) -> list[str]:
        """Type a line; the lines shown before the next prompt (after the line's echo)."""
        self.child.sendline(line)
        self.child.expect_exact(">>> ")
        shown = ANSI.sub("", self.child.before).split("\r\n")
        assert shown[0] == line and shown[-1] == ""
        return shown[1:-1]

    def reply(self, line: str) -> tuple[str, re.Match]:
        """A turn: the reply as shown, and its stats line."""
        *reply, stats = self.say(line)
        match = STATS.match(stats)
        assert match, stats
        return "\n".join(reply), match


def test_a_conversation_at_a_terminal_remembers_streams_and_survives_ctrl_c(embedded, tokenizer, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(embedded.parent)  # the converted model, and a history of this test's own
    saved = tmp_path / "chat.jsonl"
    term = Terminal(home, "-n", "6")

    first, stats1 = term.reply("Remember the word banana.")
    second, stats2 = term.reply("What word did I ask you to remember?")
    assert "banana" in second.lower()  # alone, the model says "I'm sorry for any confusion..."
    assert term.say("/system Answer in French.") == ["Set system prompt."]
    third, stats3 = term.reply("What is the capital of France?")

    assert term.say("/set max_new_tokens 300") == ["Set max_new_tokens to 300."]
    term.child.sendline("Count from 1 to 100.")
    term.child.expect_exact("Count from 1 to 100.\r\n")
    term.child.read_nonblocking(1, timeout=600)  # the reply has begun
    term.child.sendintr()
    term.child.expect_exact(">>> ")
    assert "tok/s" not in term.child.before  # stopped: no stats line
    # Up-arrow recalls the last line from readline's history.
    assert term.say("/set max_new_tokens 4") == ["Set max_new_tokens to 4."]
    term.child.send("\x1b[A\r")
    term.child.expect_exact(">>> ")
    assert ANSI.sub("", term.child.before).split("\r\n")[-2] == "Set max_new_tokens to 4."
    fifth, stats5 = term.reply("Thanks!")
    assert term.say(f"/save {saved}") == [f"Saved 10 messages to {saved}."]
    term.child.sendeof()
    term.child.expect(pexpect.EOF)
    term.child.close()
    assert term.child.exitstatus == 0

    messages = orjson.loads(saved.read_bytes())["messages"]
    system = {"role": "system", "content": "Answer in French."}
    assert messages == [system, user("Remember the word banana."), assistant(first),
                        user("What word did I ask you to remember?"), assistant(second),
                        user("What is the capital of France?"), assistant(third),
                        user("Count from 1 to 100."),  # the stopped turn: its question only
                        user("Thanks!"), assistant(fifth)]
    # Each turn's prompt was the whole conversation so far (memory), with the system prompt from
    # /system on (without one, SmolLM2's template puts its own), counted by transformers.
    turns = [(stats1, messages[1:2], 6), (stats2, messages[1:4], 6), (stats3, messages[:6], 6),
             (stats5, messages[:9], 4)]
    for stats, asked, limit in turns:
        assert int(stats[1]) == prompt_tokens(tokenizer, asked)
        assert int(stats[2]) <= limit and stats[3] in ("eos", "length")
    assert (home / "chat_history").read_text().splitlines() == [
        "Remember the word banana.", "What word did I ask you to remember?", "/system Answer in French.",
        "What is the capital of France?", "/set max_new_tokens 300", "Count from 1 to 100.",
        "/set max_new_tokens 4", "/set max_new_tokens 4", "Thanks!", f"/save {saved}"]


def test_save_fed_to_lm_generate_gives_the_reply_lm_chat_gives(embedded, tmp_path):
    saved = tmp_path / "chat.jsonl"
    question = "What word did I ask you to remember?"
    chat = run_tool("lm-chat", "-n", "6", input=f"Remember the word banana.\n/save {saved}\n{question}\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr.decode() == f"Saved 2 messages to {saved}.\n"
    first, second = jsonl(chat.stdout)
    record = orjson.loads(saved.read_bytes())
    assert saved.read_bytes().count(b"\n") == 1
    assert record == {"messages": [user("Remember the word banana."), assistant(first["generated"])]}
    assert second["messages"] == record["messages"] + [user(question)]
    assert "banana" in second["generated"].lower()

    asked = orjson.dumps({"messages": record["messages"] + [user(question)]}) + b"\n"
    generate = run_tool("lm-generate", "-n", "6", input=asked)
    assert generate.returncode == 0, generate.stderr
    (generated,) = jsonl(generate.stdout)
    assert generated["generated"] == second["generated"]
    assert ({k: generated["stats"][k] for k in ("input_tokens", "output_tokens", "finish_reason")}
            == {k: second["stats"][k] for k in ("input_tokens", "output_tokens", "finish_reason")})


def test_a_scripted_chat_is_a_jsonl_transcript_that_replays_with_its_seed(tiny_llama):
    script = "The quick\nbrown fox\n/set temperature 0.5\njumps over\n"

    def chat(seed: int) -> list[dict]:
        result = run_tool("lm-chat", "--model", str(tiny_llama), "-n", "8", "-t", "1.0", "--seed", str(seed),
                          input=script)
        assert result.returncode == 0, result.stderr
        assert result.stderr.decode() == "Set temperature to 0.5.\n"
        records = jsonl(result.stdout)
        for r in records:
            assert all(isinstance(r["stats"].pop(k), float) for k in TIMES)
        return records

    a, b, c = chat(3), chat(3), chat(4)
    assert a == b
    assert [r["generated"] for r in a] != [r["generated"] for r in c]
    assert [r["messages"] for r in a] == [
        [user("The quick")],
        [user("The quick"), assistant(a[0]["generated"]), user("brown fox")],
        [user("The quick"), assistant(a[0]["generated"]), user("brown fox"), assistant(a[1]["generated"]),
         user("jumps over")]]
    assert [(r["manifest"]["sampling"]["temperature"], r["manifest"]["sampling"]["seed"]) for r in a] == [
        (1.0, 3), (1.0, 3), (0.5, 3)]
    assert all(r["stats"]["output_tokens"] <= 8 for r in a)


def test_through_a_server_the_transcript_is_the_in_process_one(tiny_llama):
    from serve_helpers import Server

    script = "The quick\nbrown fox\n"
    local = run_tool("lm-chat", "--model", str(tiny_llama), "-n", "6", "--seed", "1", input=script)
    server = Server(tiny_llama)
    try:
        remote = run_tool("lm-chat", "--server", server.url, "--model", str(tiny_llama), "-n", "6", "--seed", "1",
                          input=script)
    finally:
        server.stop()
    assert local.returncode == remote.returncode == 0, remote.stderr
    mine, theirs = jsonl(local.stdout), jsonl(remote.stdout)
    assert [(r["messages"], r["generated"]) for r in theirs] == [(r["messages"], r["generated"]) for r in mine]
    assert [r["stats"]["input_tokens"] for r in theirs] == [r["stats"]["input_tokens"] for r in mine]


def test_no_server_is_one_line_and_exit_1():
    result = run_tool("lm-chat", "--server", "http://127.0.0.1:1", input="hi\n")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode().startswith("lm-chat: error: no server at http://127.0.0.1:1/v1")
    assert len(result.stderr.splitlines()) == 1
