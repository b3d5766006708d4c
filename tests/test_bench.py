"""lm-bench: its records, its ratios and its errors (never its timings)."""

from __future__ import annotations

import io

import orjson
from click.testing import CliRunner
from rich.console import Console

from lmpipe.bin.bench import main
from lmpipe.tasks.bench import table


def bench(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result, [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_jsonl_with_a_transformers_baseline_and_perplexity(tiny_llama_raw):
    result, records = bench("-m", str(tiny_llama_raw), "-b", "1", "-b", "2", "-r", "2", "-p", "6", "-g", "3",
                            "--baseline", "transformers", "--perplexity", "--quantize", "int8", "--cache", "static")
    assert result.exit_code == 0, result.output
    cases = [(r["case"], r["impl"], r.get("batch")) for r in records]
    assert cases == [
        ("memory", "lmpipe", None),
        ("memory", "transformers", None),
        ("generate", "lmpipe", 1), ("generate", "transformers", 1),
        ("generate", "lmpipe", 2), ("generate", "transformers", 2),
        ("ratio", "ratio", None),
        ("perplexity", "lmpipe", None),
    ]
    memory = records[0]
    assert memory["manifest"]["quantize"] == "int8" and memory["model_mb"] > 0
    assert records[1]["model_mb"] > memory["model_mb"]  # float32 beside int8
    for r in records[:2]:  # each measured in its own fresh process
        assert r["peak_rss_mb"] >= r["import_rss_mb"] > 0  # a tiny model may fit in what the imports left
        assert r["model_peak_mb"] == round(r["peak_rss_mb"] - r["import_rss_mb"], 1)
    base_peak = records[1]["model_peak_mb"]
    assert records[1]["model_peak_ratio"] == (round(memory["model_peak_mb"] / base_peak, 2) if base_peak else None)
    del records[1]
    for r in records[1:5]:
        assert r["prompt_tokens"] == 6 and r["repetitions"] == 2
        for key in ("pp_tok_s", "ttft_s", "decode_tok_s", "aggregate_tok_s", "total_s"):
            assert 0 < r[key]["min"] <= r[key]["median"]
    ratio = records[5]
    assert ratio["decode_b1"] == round(records[1]["decode_tok_s"]["median"] / records[2]["decode_tok_s"]["median"], 2)
    assert {"aggregate_b2_vs_baseline_b1_decode", "aggregate_b2", "ttft_b1"} <= ratio.keys()
    ppl = records[6]
    assert ppl["perplexity"] > 1 and ppl["baseline_perplexity"] > 1 and "change" in ppl


def test_the_decode_rate_is_timed_inside_the_call_that_generates():
    """Each call reports its own decode time; the rate is count - 1 over it, not a difference of two calls' times
    (which came out near 1e10 tok/s when a long prompt outweighed a few new tokens)."""
    from lmpipe.tasks.bench_cases import BenchSettings, Timed, measure

    def call(prompts, new):
        return Timed([new] * len(prompts), 0.5)

    rows = list(measure({"lmpipe": call}, [1, 2, 3], BenchSettings(batches=(2,), gen_tokens=11, repetitions=2)))
    assert rows[0]["decode_tok_s"] == {"min": 20.0, "median": 20.0}


def test_llama_cpp_gets_the_context_lmpipe_runs_with(monkeypatch):
    """llama.cpp's n_ctx was fixed at 2048, so an 8k-token prompt could not be compared at --ctx-size 8192."""
    import sys
    import types

    from lmpipe.models.loading import ModelSettings
    from lmpipe.tasks.bench_cases import BenchSettings, llama_cpp_call, llama_cpp_context

    seen = {}

    class Llama:
        def __init__(self, model_path, n_ctx, n_threads, verbose):
            seen.update(path=model_path, n_ctx=n_ctx)

    monkeypatch.setitem(sys.modules, "llama_cpp", types.SimpleNamespace(Llama=Llama))
    asked = BenchSettings(model=ModelSettings(ctx_size=8192), prompt_tokens=8000, gen_tokens=4)
    llama_cpp_call("m.gguf", None, llama_cpp_context(asked))
    assert seen == {"path": "m.gguf", "n_ctx": 8192}
    assert llama_cpp_context(BenchSettings(prompt_tokens=4000, gen_tokens=32)) == 4032
    assert llama_cpp_context(BenchSettings()) == 2048


def test_each_implementation_times_its_own_first_token(tiny_llama_raw):
    import time

    from lmpipe.engine.decoding import Decoding
    from lmpipe.models.loading import ModelSettings, load
    from lmpipe.tasks.bench_cases import lmpipe_call, transformers_call

    lm = load(ModelSettings(str(tiny_llama_raw)))
    for call in (lmpipe_call(lm, Decoding()), transformers_call(lm.model, lm.tokenizer)):
        start = time.perf_counter()
        done = call([[5, 6, 7, 8], [9, 10, 11, 12]], 6)
        total = time.perf_counter() - start
        assert len(done.counts) == 2 and max(done.counts) >= 2
        assert 0 < done.decode_s < total  # the clock started at a new token, inside the call


def test_bad_settings_are_usage_errors(tiny_llama_raw):
    result, records = bench("-m", str(tiny_llama_raw), "-g", "1")
    assert result.exit_code == 2 and records == []
    assert "--gen-tokens" in result.stderr
    result, _ = bench("-m", "/no/such/model")
    assert result.exit_code == 2


def test_the_table_for_people():
    records = [
        {"case": "generate", "impl": "lmpipe", "batch": 1, "pp_tok_s": {"min": 90, "median": 100},
         "ttft_s": {"min": 0.1, "median": 0.2}, "decode_tok_s": {"min": 40, "median": 50},
         "aggregate_tok_s": {"min": 40, "median": 45}},
        {"case": "ratio", "impl": "ratio", "baseline": "transformers", "decode_b1": 3.1},
    ]
    import lmpipe.tasks.bench as module

    buffer = io.StringIO()
    original = Console.__init__
    try:
        Console.__init__ = lambda self, **kw: original(self, file=buffer, width=120, **kw)
        table(records)
    finally:
        Console.__init__ = original
    shown = buffer.getvalue()
    assert "lm-bench" in shown and "50 (min 40)" in shown and "decode_b1 3.1" in shown
    assert module.table is table


def test_concurrency_loads_a_running_server_and_counts_what_it_generated(tiny_llama):
    """lm-bench -c: any OpenAI-compatible server; here a real lm-serve, whose /metrics counts the same tokens."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families
    from serve_helpers import Server

    from lmpipe.engine.timing import per_second

    def generated(server) -> float:
        page = httpx.get(server.url + "/metrics").text
        return sum(s.value for f in text_string_to_metric_families(page) for s in f.samples
                   if s.name == "vllm:generation_tokens_total")

    s = Server(tiny_llama)
    try:
        result, records = bench("--skip-generate", "--server", s.url, "-c", "1", "-c", "3", "-g", "5", "-r", "1",
                                "-m", str(tiny_llama))
        assert result.exit_code == 0, result.output
        assert [(r["case"], r.get("concurrency")) for r in records] == [
            ("server-ttft", None), ("server-load", 1), ("server-load", 3)]
        loads = records[1:]
        assert [r["requests"] for r in loads] == [2, 6] and all(r["gen_tokens"] == 5 for r in loads)
        assert all(0 < r["tokens"] <= r["requests"] * 5 for r in loads)
        assert all(r["aggregate_tok_s"] == per_second(r["tokens"], r["seconds"]) for r in loads)
        # Every token the load counted is one the server generated: the warm-ups' and the ttft case's besides.
        before = generated(s)
        _, again = bench("--skip-generate", "--server", s.url, "-c", "2", "-g", "5", "-r", "1", "-m", str(tiny_llama))
        load = again[-1]
        ttft_and_warmups = generated(s) - before - load["tokens"]
        # ttft: a warm-up and a timed request of 8 tokens; the load's warm-up: 2
        assert 0 < ttft_and_warmups <= 2 * 8 + 2
    finally:
        s.stop()
    result, records = bench("--skip-generate", "-c", "4", "-m", str(tiny_llama))
    assert result.exit_code == 2 and "--concurrency" in result.stderr and records == []


def test_loads_time_a_first_load_into_an_empty_cache_and_a_second_from_it(tmp_path):
    """--loads: both loads in fresh processes and a fresh lmpipe home, whose packed cache is
    measured against the file; the user's own cache is left as it was."""
    from tiny_gguf import write_tiny_llama_gguf

    from lmpipe import paths

    path = write_tiny_llama_gguf(tmp_path / "tiny-Q4_K.gguf", "Q4_K")
    before = sorted(p.name for p in paths.models_dir().glob("*")) if paths.models_dir().exists() else []
    result, records = bench("-m", str(path), "--skip-generate", "--loads")
    assert result.exit_code == 0, result.output
    assert [(r["impl"], r["case"]) for r in records] == [("lmpipe", "load")]
    (record,) = records
    assert set(record) == {"impl", "case", "first_s", "second_s", "cache_mb", "cache_ratio"}
    assert record["first_s"] > 0 and record["second_s"] > 0
    # the packed layers, about the file's size (Q4_K as int4 with its bfloat16 scales, Q6_K as int8)
    assert 0.5 < record["cache_ratio"] < 1.5, record
    after = sorted(p.name for p in paths.models_dir().glob("*")) if paths.models_dir().exists() else []
    assert after == before
