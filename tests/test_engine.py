"""The server's scheduler: batches, cancellation, the bounded queue, keep-alive unloading."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from lmpipe.engine.generation import Completion
from lmpipe.engine.loop import Request
from lmpipe.engine.sampling import Sampling
from lmpipe.engine.scheduler import Scheduler, SchedulerSettings, batch_key
from lmpipe.models.loading import ModelSettings


def test_greedy_requests_share_a_batch_whatever_their_seed():
    assert batch_key(Sampling(seed=1)) == batch_key(Sampling(seed=2))
    assert batch_key(Sampling(temperature=0.7, seed=1)) != batch_key(Sampling(temperature=0.7, seed=2))
    assert batch_key(Sampling(max_new_tokens=4)) != batch_key(Sampling(max_new_tokens=5))


def wait_for(job_events: list, done: threading.Event, timeout: float = 120) -> Completion:
    assert done.wait(timeout)
    return job_events[-1]


@pytest.fixture
def scheduler(tiny_llama):
    e = Scheduler(SchedulerSettings(model=ModelSettings(str(tiny_llama)), max_batch=4, max_queue=2, keep_alive=0.5))
    yield e
    e.close()


def collector():
    """A job's events as they come, and an event set when its Completion (or error) arrives."""
    events: list = []
    done = threading.Event()

    def emit(event):
        events.append(event)
        if isinstance(event, (Completion, Exception)):
            done.set()

    return events, done, emit


def job(scheduler: Scheduler, n: int = 6):
    events, done, emit = collector()
    ids = list(scheduler.tokenizer("The quick brown fox")["input_ids"])
    return Request(ids, Sampling(max_new_tokens=n), emit), events, done


def test_answers_then_unloads_after_keep_alive_and_reloads(scheduler):
    first, events, done = job(scheduler)
    scheduler.submit(first)
    c = wait_for(events, done)
    assert isinstance(c, Completion) and c.output_tokens >= 1
    deadline = time.monotonic() + 30
    while scheduler.loaded and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not scheduler.loaded
    again, events2, done2 = job(scheduler)
    scheduler.submit(again)
    assert wait_for(events2, done2).ids == c.ids


def test_the_queue_is_bounded(scheduler):
    scheduler.model()
    with scheduler._lock:  # hold the worker at the model so the queue fills
        jobs = [job(scheduler)[0] for _ in range(4)]
        accepted = 0
        with pytest.raises(queue.Full):
            for j in jobs:
                scheduler.submit(j)
                accepted += 1
        for j in jobs:
            j.cancelled.set()
    assert accepted in (2, 3)  # the worker may have taken one before it blocked


def solo(scheduler: Scheduler, ids: list[int], sampling: Sampling) -> Completion:
    from lmpipe.engine.generation import generate

    lm = scheduler.model()
    return [e for e in generate(lm.model, lm.tokenizer, [ids], sampling) if isinstance(e, Completion)][0]


def submit(scheduler: Scheduler, prompt: str, sampling: Sampling, grammar: str | None = None):
    events, done, emit = collector()
    ids = list(scheduler.tokenizer(prompt)["input_ids"])
    j = Request(ids, sampling, emit, grammar=grammar)
    scheduler.submit(j)
    return j, events, done


def test_a_request_joins_a_running_batch_and_leaves_it_before_the_long_one_ends(scheduler):
    scheduler.model()
    long_sampling = Sampling(max_new_tokens=60, stop=("never appears",))
    long_job, long_events, long_done = submit(scheduler, "Once upon a time", long_sampling)
    deadline = time.monotonic() + 60
    while len(long_events) < 5 and time.monotonic() < deadline:  # the long one is decoding
        time.sleep(0.01)
    short_job, short_events, short_done = submit(scheduler, "The quick brown fox", Sampling(max_new_tokens=4))
    short = wait_for(short_events, short_done)
    assert not long_done.is_set()  # continuous: the short request did not wait for the long one
    long = wait_for(long_events, long_done)
    assert scheduler.loop is not None and not scheduler.loop.live  # every row freed
    # Joining and leaving a batch changes no tokens: each equals its own run alone.
    assert short.ids == solo(scheduler, short_job.ids, Sampling(max_new_tokens=4)).ids
    assert long.ids == solo(scheduler, long_job.ids, long_sampling).ids


def test_rows_keep_their_own_sampling_and_seed(scheduler):
    scheduler.model()
    sampled = Sampling(temperature=0.9, top_k=20, seed=7, max_new_tokens=12)
    runs = [submit(scheduler, "Once upon a time", sampled),
            submit(scheduler, "The quick brown fox", Sampling(max_new_tokens=12))]
    got = [wait_for(events, done) for _, events, done in runs]
    assert got[0].ids == solo(scheduler, runs[0][0].ids, sampled).ids
    assert got[1].ids == solo(scheduler, runs[1][0].ids, Sampling(max_new_tokens=12)).ids


def test_a_cancelled_request_frees_its_row_at_once(tiny_llama):
    e = Scheduler(SchedulerSettings(model=ModelSettings(str(tiny_llama)), max_batch=1, max_queue=4))
    try:
        e.model()
        never = Sampling(max_new_tokens=10_000, stop=("x" * 50,))
        stuck, stuck_events, stuck_done = submit(e, "Once upon a time", never)
        deadline = time.monotonic() + 60
        while not stuck_events and time.monotonic() < deadline:
            time.sleep(0.01)
        _, events, done = submit(e, "The quick brown fox", Sampling(max_new_tokens=3))
        time.sleep(0.3)
        assert not done.is_set()  # one row, and it is taken
        stuck.cancelled.set()
        assert isinstance(wait_for(events, done, timeout=60), Completion)
        assert not stuck_done.is_set()  # an abandoned request gets nothing more
    finally:
        e.close()


def test_a_constrained_request_joins_a_free_one_in_the_running_batch(scheduler):
    from lmpipe.engine.constrain import choice_constraint

    scheduler.model()
    free_job, free_events, free_done = submit(scheduler, "Once upon a time", Sampling(max_new_tokens=30))
    while not free_events:
        time.sleep(0.01)
    grammar = choice_constraint(["yes", "no"]).grammar
    _, events, done = submit(scheduler, "Answer:", Sampling(max_new_tokens=8), grammar)
    answer = wait_for(events, done)
    assert isinstance(answer, Completion) and answer.text in ("yes", "no")
    assert wait_for(free_events, free_done).ids == solo(scheduler, free_job.ids, Sampling(max_new_tokens=30)).ids


def test_a_prompt_sharing_a_prefix_reuses_its_keys_and_gives_the_same_tokens(scheduler, monkeypatch):
    import lmpipe.engine.batching

    starts: list[int] = []
    real = lmpipe.engine.batching.prefill

    def recording(*args, start=0, **kwargs):
        starts.append(start)
        return real(*args, start=start, **kwargs)

    monkeypatch.setattr(lmpipe.engine.batching, "prefill", recording)
    scheduler.model()
    base = "You are a careful assistant who answers briefly and well. Question:"
    first = wait_for(*submit(scheduler, base + " what is a fox?", Sampling(max_new_tokens=10))[1:])
    assert first.output_tokens
    job, events, done = submit(scheduler, base + " what is a dog?", Sampling(max_new_tokens=10))
    second = wait_for(events, done)
    asked = tuple(scheduler.tokenizer(base + " what is a fox?")["input_ids"])
    shared = lmpipe.engine.batching.shared_length(asked, job.ids)
    assert starts == [0, shared] and shared >= 8  # the second prompt computed only what it does not share
    assert second.ids == solo(scheduler, job.ids, Sampling(max_new_tokens=10)).ids


def test_a_prompt_from_the_prefix_cache_scores_within_the_readmes_bound(tiny_llama):
    """docs/records.md, "Replaying a record": keys and values reused from the prompt cache leave only the
    last tokens to compute, over fewer rows; their logits stay within 1e-4 of a cold prefill's."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmpipe.engine.batching import FastRows, PrefixCache

    torch.set_grad_enabled(False)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(tiny_llama)("You are a careful assistant who answers briefly.").input_ids
    cache = PrefixCache()
    rows = FastRows(model, 2, prefixes=cache)
    _, cold = rows.prefill([ids], room=4)
    hits = cache.counts.hits
    _, warm = rows.prefill([ids], room=4)
    assert cache.counts.hits - hits == len(ids) - 1  # every token but the last came from the cache
    assert cold.shape == warm.shape == (1, model.config.vocab_size)
    cold, warm = torch.log_softmax(cold[0], -1), torch.log_softmax(warm[0], -1)
    assert float((cold - warm).abs().max()) <= 1e-4
    assert int(cold.argmax()) == int(warm.argmax())
