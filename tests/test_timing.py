"""One definition of the stats: every loop reads the one clock, and ttft and tokens/s come from one function."""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import astuple
from pathlib import Path

import orjson
from click.testing import CliRunner

from lmpipe.engine import timing
from lmpipe.engine.events import Completion
from lmpipe.engine.sampling import Sampling
from lmpipe.engine.timing import Rates, combined_rate, per_second, rates

ROOT = Path(__file__).resolve().parent.parent


def test_rates_are_decode_speed_after_the_first_token():
    assert rates([0.5, 1.0, 1.5, 2.5]) == Rates(0.5, 2.5, 1.5)  # 3 tokens after the first, in 2 s
    assert rates([0.4]) == Rates(0.4, 0.4, 2.5)  # one token: rated over its whole time
    assert rates([2.0, 2.0, 2.0]) == Rates(2.0, 2.0, 1.5)  # all at once (beam search): the same
    assert rates([]) == Rates(0.0, 0.0, 0.0)
    assert rates([0.1234567891, 0.3]).ttft_s == 0.123457
    assert per_second(7, 2.0) == 3.5 and per_second(3, 0.0) == 0.0
    pieces = [(5, 0.2, 1.0), (3, 0.2, 0.8), (9, 0.1, 2.0), (1, 0.3, 0.3)]
    assert combined_rate(pieces) == round((4 + 2 + 8) / (0.8 + 0.6 + 1.9), 3)


class Scripted:
    """Clock methods that read 0.25 s more at each reading of each clock."""

    @staticmethod
    def install(monkeypatch):
        def init(self):
            self.readings = 0

        def call(self):
            self.readings += 1
            return self.readings * 0.25

        monkeypatch.setattr(timing.Clock, "__init__", init)
        monkeypatch.setattr(timing.Clock, "__call__", call)


def from_the_clock(c: Completion) -> bool:
    times = c.token_seconds
    return bool(times) and all((t / 0.25).is_integer() for t in times) and list(times) == sorted(times)


def served(model: str, ids: list[int], sampling: Sampling) -> Completion:
    from lmpipe.engine.loop import Request
    from lmpipe.engine.scheduler import Scheduler, SchedulerSettings
    from lmpipe.models.loading import ModelSettings

    scheduler = Scheduler(SchedulerSettings(model=ModelSettings(model)))
    got: list = []
    done = threading.Event()

    def emit(event):
        got.append(event)
        if isinstance(event, (Completion, Exception)):
            done.set()

    try:
        scheduler.submit(Request(list(ids), sampling, emit))
        assert done.wait(120)
    finally:
        scheduler.close()
    assert isinstance(got[-1], Completion), got[-1]
    return got[-1]


def test_the_same_token_times_give_the_same_stats_in_every_loop(tiny_llama, tiny_marian, tiny_bart, monkeypatch):
    """Every loop reads its token times from the one Clock; given the same times, the same stats."""
    from seq2seq_reference import _load

    from lmpipe.backends.seq2seq import Seq2SeqGenerator, Seq2SeqSettings
    from lmpipe.engine.decoding import Decoding
    from lmpipe.engine.generation import generate
    from lmpipe.models.loading import ModelSettings, load

    Scripted.install(monkeypatch)
    lm = load(ModelSettings(str(tiny_llama)))
    ids = list(lm.tokenizer("Once upon a time")["input_ids"])
    sampling = Sampling(max_new_tokens=10)

    def one(**kw) -> Completion:
        return [e for e in generate(lm.model, lm.tokenizer, [ids], sampling, device=lm.device, **kw)
                if isinstance(e, Completion)][0]

    fast, static = one(), one(decoding=Decoding("dynamic"))
    other = list(lm.tokenizer("The quick brown fox")["input_ids"])
    batch = [e for e in generate(lm.model, lm.tokenizer, [ids, other], sampling, device=lm.device)
             if isinstance(e, Completion)]
    server = served(str(tiny_llama), ids, sampling)
    drafted = one(decoding=Decoding(draft_tokens=3), draft=lm.model)
    texts = ["Rain is expected tomorrow.", "Hola mundo."]
    bart_tokenizer, bart = _load(str(tiny_bart))
    beams = Seq2SeqGenerator(bart, bart_tokenizer, "cpu", Seq2SeqSettings(num_beams=2, max_length=10)).run(texts)
    marian_tokenizer, marian = _load(str(tiny_marian))
    steps = Seq2SeqGenerator(marian, marian_tokenizer, "cpu", Seq2SeqSettings(max_length=10)).run(texts)

    # One reading per step of one row: the same times in-process, on either model runner, and through lm-serve.
    assert fast.token_seconds == static.token_seconds == server.token_seconds
    assert fast.token_seconds == tuple(0.25 * (k + 1) for k in range(len(fast.token_seconds)))
    assert astuple(fast)[6:9] == astuple(static)[6:9] == astuple(server)[6:9]
    # Rows of one batch read the clock once per step: their k-th tokens share a time.
    shared = min(len(c.token_seconds) for c in batch)
    assert batch[0].token_seconds[:shared] == batch[1].token_seconds[:shared] == fast.token_seconds[:shared]
    for c in (fast, static, server, drafted, *batch, *beams, *steps):
        assert from_the_clock(c), c.token_seconds
        assert (c.ttft_s, c.total_s, c.tokens_per_s) == astuple(rates(c.token_seconds))
    assert drafted.ids == fast.ids
    assert len(set(drafted.token_seconds)) < len(drafted.token_seconds)  # a round's tokens come at once


MARK = Rates(111.0, 222.0, 333.0)


def test_every_front_door_takes_its_stats_from_the_one_function(tiny_llama, tiny_marian, monkeypatch):
    """lm-generate, lm-serve, speculative decoding, lm-translate (seq2seq and chat models) and the
    dashboard's chat all report what lmpipe.engine.timing.rates says."""
    from lmpipe.backends.text import ChatBackend, chat_task
    from lmpipe.bin.generate import main as lm_generate
    from lmpipe.bin.translate import main as lm_translate
    from lmpipe.engine.generation import generate
    from lmpipe.models.loading import ModelSettings, load
    from lmpipe.tui.pool import ChatSettings, chat_turn
    from lmpipe.tui.pool import ModelPool as Pool

    monkeypatch.setattr(timing, "rates", lambda times: MARK)
    model = str(tiny_llama)

    def shown(stats: dict) -> tuple:
        return stats["ttft_s"], stats["total_s"], stats["tokens_per_s"]

    mark = astuple(MARK)
    result = CliRunner().invoke(lm_generate, ["-m", model, "-n", "6"], input="The quick brown fox\n",
                                catch_exceptions=False)
    assert shown(orjson.loads(result.stdout_bytes.splitlines()[-1])["stats"]) == mark
    drafted = CliRunner().invoke(lm_generate, ["-m", model, "-n", "6", "--draft-model", model],
                                 input="The quick brown fox\n", catch_exceptions=False)
    assert shown(orjson.loads(drafted.stdout_bytes.splitlines()[-1])["stats"]) == mark
    lm = load(ModelSettings(model))
    ids = list(lm.tokenizer("The quick brown fox")["input_ids"])
    assert astuple(served(model, ids, Sampling(max_new_tokens=6)))[6:9] == mark
    spec = [e for e in generate(lm.model, lm.tokenizer, [ids], Sampling(max_new_tokens=6), draft=lm.model)
            if isinstance(e, Completion)]
    assert astuple(spec[0])[6:9] == mark
    marian = ["-m", str(tiny_marian), "--from", "en", "--to", "es", "--max-length", "8"]
    seq2seq = CliRunner().invoke(lm_translate, marian,
                                 input='{"text": "Rain is expected tomorrow."}\n', catch_exceptions=False)
    assert shown(orjson.loads(seq2seq.stdout_bytes.splitlines()[-1])["stats"]) == mark
    chat = ChatBackend(chat_task(lm, 6), lambda text: f"Translate to French: {text}").run(["Good morning."])
    assert shown(chat[0].stats) == mark
    reply = chat_turn(Pool(), [{"role": "user", "content": "Hi"}], ChatSettings(model=model, max_new_tokens=6),
                      lambda text, n: None, lambda: False)
    assert shown(reply.stats) == mark


def sources() -> list[Path]:
    return [p for folder in ("lib", "tui", "bin", "filters") for p in (ROOT / folder).rglob("*.py")]


def test_no_other_module_computes_tokens_per_second():
    """A division with a token count in it is a rate of tokens: lmpipe.engine.timing's job alone.
    And no module of the generation loops reads a clock of its own."""
    home = ROOT / "lib" / "engine" / "timing.py"
    rates_elsewhere, clocks_elsewhere = [], []
    for path in sources():
        if path == home:
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.FloorDiv)):
                if any(isinstance(side, ast.Constant) for side in (node.left, node.right)):
                    continue  # a path joined, a unit converted
                text = ast.get_source_segment(source, node) or ""
                counted = re.search(r"token|steps|counts|times|\bids\b", text, re.I)
                if counted and not re.search(r"tok_s|per_s", text):  # (not a ratio of two rates)
                    rates_elsewhere.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text}")
        loops = path.parent.name in ("engine", "backends") or path.name == "pool.py"
        if loops and re.search(r"perf_counter|time\.time\(\)", source):  # (monotonic: the server's keep-alive)
            clocks_elsewhere.append(str(path.relative_to(ROOT)))
    assert rates_elsewhere == []
    assert clocks_elsewhere == []


def test_tokens_per_s_is_only_copied_outside_timing():
    """Outside lmpipe.engine.timing the field is read and passed on, never worked out."""
    name = "tokens_per_s"
    home = ROOT / "lib" / "engine" / "timing.py"
    computed = []
    for path in sources():
        if path == home:
            continue
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            values = []
            if isinstance(node, ast.Dict):
                values = [v for k, v in zip(node.keys, node.values, strict=True)
                          if isinstance(k, ast.Constant) and k.value == name]
            elif isinstance(node, ast.keyword) and node.arg == name:
                values = [node.value]
            elif isinstance(node, ast.Assign):
                values = [node.value for t in node.targets if getattr(t, "attr", getattr(t, "id", None)) == name]
            for value in values:
                if any(isinstance(n, ast.BinOp) or (isinstance(n, ast.Call) and getattr(n.func, "id", "") == "round")
                       for n in ast.walk(value)):
                    computed.append(f"{path.relative_to(ROOT)}:{value.lineno}: {ast.get_source_segment(source, value)}")
    assert computed == []
