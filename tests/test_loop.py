"""The one generation loop: the same token events through every front door, policies per row."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lmpipe.chat.prompts import PromptSettings, prompt_ids
from lmpipe.engine.batching import FastRows
from lmpipe.engine.decoding import Decoding, StaticBatch
from lmpipe.engine.events import Completion, Token
from lmpipe.engine.generation import generate, runner_for
from lmpipe.engine.loop import Loop, Request, eos_ids, pad_id
from lmpipe.engine.sampling import Sampling
from lmpipe.models.loading import ModelSettings, load

MESSAGES = [{"role": "user", "content": "Tell me about foxes and rivers."}]
N = 16


def token_events(events) -> list[tuple[int, str]]:
    return [(e.id, e.text) for e in events if isinstance(e, Token)]


class Served:
    """lm-serve's scheduler with its steps slowed down, and one log of every job's events in order."""

    def __init__(self, tiny_llama, monkeypatch):
        from lmpipe.engine.scheduler import Scheduler, SchedulerSettings

        real = Loop.step

        def paced(loop):
            time.sleep(0.03)  # a step long enough that a request submitted meanwhile joins the next one
            real(loop)

        monkeypatch.setattr(Loop, "step", paced)
        self.scheduler = Scheduler(SchedulerSettings(model=ModelSettings(str(tiny_llama)), max_batch=4))
        self.log: list[tuple[str, object]] = []  # appended on the worker thread only: one order for all jobs
        self.done: dict[str, threading.Event] = {}

    def submit(self, name: str, ids: list[int], sampling: Sampling) -> None:
        done = self.done[name] = threading.Event()

        def emit(event):
            self.log.append((name, event))
            if isinstance(event, (Completion, Exception)):
                done.set()

        self.scheduler.submit(Request(list(ids), sampling, emit))

    def events(self, name: str) -> list:
        return [e for n, e in self.log if n == name]

    def first(self, name: str) -> int:
        return next(i for i, (n, _) in enumerate(self.log) if n == name)

    def last(self, name: str) -> int:
        return max(i for i, (n, _) in enumerate(self.log) if n == name)

    def wait_for(self, name: str, count: int = 1) -> None:
        deadline = time.monotonic() + 120
        while len(self.events(name)) < count and not self.done[name].is_set():
            assert time.monotonic() < deadline
            time.sleep(0.002)


def test_the_same_greedy_request_gives_the_same_token_events_through_every_front_door(tiny_llama, monkeypatch):
    import lmpipe.engine.batching
    from lmpipe.tui.pool import ChatSettings, chat_turn
    from lmpipe.tui.pool import ModelPool as Pool

    lm = load(ModelSettings(str(tiny_llama)))
    ids = prompt_ids({"messages": MESSAGES}, lm.tokenizer, PromptSettings())
    sampling = Sampling(max_new_tokens=N)
    alone = token_events(generate(lm.model, lm.tokenizer, [ids], sampling, device=lm.device))
    assert len(alone) >= 8  # long enough for other requests to join and leave while it decodes

    # Speculative decoding, the draft being the model itself: its rounds really run, and change nothing.
    rounds = []
    extend = lmpipe.engine.batching.FastRows.extend
    monkeypatch.setattr(lmpipe.engine.batching.FastRows, "extend", lambda *a: rounds.append(1) or extend(*a))
    for k in (1, 3):
        drafted = generate(lm.model, lm.tokenizer, [ids], sampling, device=lm.device,
                           decoding=Decoding(draft_tokens=k), draft=lm.model)
        assert token_events(drafted) == alone
    assert rounds

    # lm-serve's scheduler: the request joins a running batch, another joins and leaves while it decodes.
    served = Served(tiny_llama, monkeypatch)
    try:
        long = list(lm.tokenizer("Once upon a time")["input_ids"])
        served.submit("long", long, Sampling(max_new_tokens=200, stop=("never appears",)))
        served.wait_for("long", 2)
        served.submit("ours", ids, sampling)
        served.wait_for("ours", 1)
        served.submit("short", list(lm.tokenizer("The quick brown fox")["input_ids"]), Sampling(max_new_tokens=3))
        for name in ("short", "ours", "long"):
            assert served.done[name].wait(120)
    finally:
        served.scheduler.close()
    assert token_events(served.events("ours")) == alone
    assert served.first("long") < served.first("ours") < served.last("long")  # it joined a running batch
    assert served.first("ours") < served.first("short")  # another joined while it decoded,
    assert served.last("short") < served.last("ours")  # and left before it ended
    assert isinstance(served.events("short")[-1], Completion)

    # The dashboard's chat worker.
    deltas: list[str] = []
    shown = [""]

    def on_text(text: str, count: int) -> None:
        assert count == len(deltas) + 1
        deltas.append(text[len(shown[0]):])
        shown[0] = text

    reply = chat_turn(Pool(), MESSAGES, ChatSettings(model=str(tiny_llama), max_new_tokens=N), on_text, lambda: False)
    assert list(zip(reply.ids, deltas, strict=True)) == alone


def load_raw(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def completions(events) -> list[Completion]:
    return sorted((e for e in events if isinstance(e, Completion)), key=lambda c: c.row)


def test_rows_with_their_own_policies_share_one_loop(tiny_llama_raw):
    """A draft, a grammar, a sampling seed and top probabilities are each a row's own: mixing
    them in one batch changes no row's tokens."""
    from lmpipe.engine.constrain import choice_constraint, row_constraints

    model, tokenizer = load_raw(tiny_llama_raw)
    prompts = [tokenizer(p).input_ids for p in ("The quick brown fox", "Answer:", "Paris is the capital of")]
    grammar = choice_constraint(["yes", "no"]).grammar
    constraints = [(), row_constraints(model, tokenizer, grammar), ()]
    greedy = Sampling(max_new_tokens=12)
    alone = [completions(generate(model, tokenizer, [p], greedy))[0].ids for p in prompts]
    constrained = completions(generate(model, tokenizer, prompts[1:2], greedy, constraints=[constraints[1]]))[0]
    assert constrained.text in ("yes", "no")
    expected = [alone[0], constrained.ids, alone[2]]
    for k in (1, 2):
        constraints = [(), row_constraints(model, tokenizer, grammar), ()]  # a matcher lives for one run
        mixed = generate(model, tokenizer, prompts, greedy, constraints=constraints, decoding=Decoding(draft_tokens=k),
                         draft=model)
        assert [c.ids for c in completions(mixed)] == expected
    probs = completions(generate(model, tokenizer, prompts, greedy, top_probs=2))
    assert [c.ids for c in probs] == alone and all(len(c.tokens) == len(c.ids) for c in probs)


def test_fast_rows_step_any_subset_of_rows_and_pack_on_release(tiny_llama_raw):

    model, tokenizer = load_raw(tiny_llama_raw)
    prompts = [tokenizer(p).input_ids for p in ("The quick brown fox", "Pipes", "def add(a, b):\n    return")]

    def alone(prompt, steps):
        rows = FastRows(model, 1)
        (slot,), logits = rows.prefill([prompt], 8)
        out = [logits[0]]
        for token in steps:
            out.append(rows.step([slot], [token])[0])
        return out

    rows = FastRows(model, 3)
    slots = [rows.prefill([p], 8)[0][0] for p in prompts]
    first = [rows.step([s], [5])[0] for s in slots[:1]]
    both = rows.step([slots[2], slots[0]], [7, 9])  # rows 2 and 0, out of order, row 1 left alone
    assert torch.allclose(both[0], alone(prompts[2], [7])[1], atol=1e-5)
    assert torch.allclose(both[1], alone(prompts[0], [5, 9])[2], atol=1e-5)
    assert torch.allclose(first[0], alone(prompts[0], [5])[1], atol=1e-5)
    rows.release(slots[0])  # the last row moves into the hole
    assert (slots[2].index, slots[1].index) == (0, 1) and rows.order == [slots[2], slots[1]]
    again = rows.step([slots[1], slots[2]], [3, 4])
    assert torch.allclose(again[0], alone(prompts[1], [3])[1], atol=1e-5)
    assert torch.allclose(again[1], alone(prompts[2], [7, 4])[2], atol=1e-5)


def test_a_static_batch_admits_its_rows_together_and_ends_with_its_last_row(tiny_llama_raw):
    model, tokenizer = load_raw(tiny_llama_raw)
    runner = StaticBatch(model, Decoding("dynamic"), 4, "cpu", tokenizer.pad_token_id)
    loop = Loop(runner, tokenizer, eos_ids(model, tokenizer))
    events: list = []
    short, long = Sampling(max_new_tokens=2), Sampling(max_new_tokens=6, stop=("never appears",))
    prompts = [tokenizer("The quick").input_ids, tokenizer("Paris is").input_ids]
    loop.admit([Request(prompts[0], short, events.append, row=0), Request(prompts[1], long, events.append, row=1)])
    assert loop.free == 0  # no row joins a running static batch
    while loop.live:
        loop.step()
    assert loop.free == 4 and runner.run is None  # the next batch may come
    done = completions(events)
    assert [c.row for c in done] == [0, 1]
    # Each row keeps its own length, and its tokens are its own (the fast path's, alone).
    for c, prompt, sampling in zip(done, prompts, (short, long), strict=True):
        assert c.ids == completions(generate(model, tokenizer, [prompt], sampling))[0].ids


def test_a_row_is_freed_before_its_completion_is_reported(tiny_llama_raw):
    """Whoever gets a Completion (lm-serve's client) may count on the row being back already."""
    model, tokenizer = load_raw(tiny_llama_raw)
    loop = Loop(FastRows(model, 2), tokenizer, eos_ids(model, tokenizer))
    seen: list[tuple[str, int]] = []

    def emit(event):
        seen.append((type(event).__name__, len(loop.live)))

    loop.admit([Request(tokenizer("The quick").input_ids, Sampling(max_new_tokens=3), emit),
                Request(tokenizer("Paris is").input_ids, Sampling(max_new_tokens=9, stop=("never",)), emit, row=1)])
    while loop.live:
        loop.step()
    finished = [live for name, live in seen if name == "Completion"]
    assert finished == [1, 0]  # the short row had left when it was reported, then the long one


def test_echo_scores_the_prompt_in_its_prefill_on_every_backend(tiny_llama):
    """A row that scores its prompt (lm-serve's echo) gets transformers' own log-probabilities for
    each prompt token, from the fast path's rows and from a left-padded batch over transformers' forward."""
    from lmpipe.engine.events import ScoredPrompt
    lm = load(ModelSettings(str(tiny_llama)))
    ids = prompt_ids({"messages": MESSAGES}, lm.tokenizer, PromptSettings())
    with torch.no_grad():
        want = torch.log_softmax(lm.model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    eos = eos_ids(lm.model, lm.tokenizer)
    for cache in ("fast", "dynamic"):
        events: list = []
        runner = runner_for(lm.model, Decoding(cache=cache), 2, lm.device, pad_id(lm.tokenizer, eos))
        loop = Loop(runner, lm.tokenizer, eos)
        loop.admit([Request(ids, Sampling(max_new_tokens=4), events.append, top_probs=2, echo=True, generates=False)])
        if cache == "fast":  # rows join: a plain row decodes beside it
            loop.admit([Request(ids, Sampling(max_new_tokens=4), events.append, row=1)])
        while loop.live:
            loop.step()
        scored = next(e for e in events if isinstance(e, ScoredPrompt))
        assert [t.id for t in scored.tokens] == ids and scored.tokens[0].logprob is None
        assert [t.logprob for t in scored.tokens[1:]] == pytest.approx(
            [float(want[i - 1, ids[i]]) for i in range(1, len(ids))], abs=1e-4)
        assert [[x.id for x in t.top] for t in scored.tokens[1:]] == [want[i].topk(2).indices.tolist()
                                                                      for i in range(len(ids) - 1)]
        done = {e.row: e for e in events if isinstance(e, Completion)}
        assert done[0].ids == () and done[0].prompt_tokens == scored.tokens
        assert cache != "fast" or len(done[1].ids) == 4
