"""lm-bench: how fast a model runs through lmpipe, beside a baseline, like llama-bench."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import context_options, draft_options, model_options, speed_options
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ: dict[str, str] = {}
FIELDS_WRITTEN = {
    "impl": "who was measured: lmpipe, transformers, llama-cpp, or ratio",
    "case": "generate, memory, ratio, perplexity, load, cold, cold-ratio, server-ttft, server-load, pipeline or "
            "pipeline-server",
    "batch": "sequences per call (generate)",
    "prompt_tokens": "prompt length in tokens (generate)",
    "gen_tokens": "new tokens asked for per sequence (generate)",
    "pp_tok_s": "prompt processing: batch x prompt tokens over the time to first token {min, median}",
    "ttft_s": "time to first token in seconds {min, median}; server-load: over the requests",
    "decode_tok_s": "per-sequence decode rate after the first token {min, median}",
    "aggregate_tok_s": "all generated tokens of the batch over the call's time {min, median}; server-load: "
                       "completion tokens of every request over the load's wall time",
    "concurrency": "server-load: requests in flight at a time (twice as many in all)",
    "tokens": "server-load: completion tokens of all requests, from each stream's usage",
    "total_s": "the whole call with gen_tokens new tokens {min, median}",
    "model_mb": "bytes held by the model's weights and buffers, in MiB (memory)",
    "peak_rss_mb": "peak resident memory of a fresh process that loads the model, reads a prompt of --prompt-tokens "
                   "and generates 8 tokens, MiB (memory)",
    "import_rss_mb": "that process after importing torch and transformers, before the model, MiB (memory)",
    "model_peak_mb": "peak_rss_mb less import_rss_mb: the model's share of the peak, MiB (memory)",
    "model_peak_ratio": "lmpipe's model_peak_mb over the baseline's (memory, transformers baseline)",
    "decode_b1": "ratio: lmpipe's single-stream decode over the baseline's",
    "aggregate_bN_vs_baseline_b1_decode": "ratio: lmpipe's aggregate rate at batch N over the baseline's single stream",
    "perplexity": "lmpipe's model on the shipped text (perplexity); baseline_perplexity and change beside it",
    "first_s": "load: seconds of lmpipe's first load of the model, into an empty cache, in a fresh process",
    "second_s": "load: seconds of its next load, from what the first left in the cache",
    "cache_mb": "load: what a GGUF's first load wrote into lmpipe's cache (its packed layers), MiB",
    "cache_ratio": "load: cache_mb over the GGUF file's size",
    "first_load": "ratio (load): lmpipe's first load over llama.cpp's load of the same file",
    "seconds": "load: llama.cpp's load of the file; cold and server-ttft: {min, median}; pipeline and "
               "pipeline-server: wall time of the pipeline; server-load: wall time of the load",
    "requests": "server-load: chat requests sent",
    "server": "server-ttft and server-load: the server's API base",
    "command": "cold: the command timed, as typed in a shell (python -c ... baselines beside lmpipe's tools)",
    "ok": "cold and pipeline: whether every run exited 0",
    "medians": "cold-ratio: each lmpipe command's median over python -c \"import tokenizers\"'s",
    "records": "pipeline: records through the three stages",
    "manifest": "model, settings, device, dtype and versions (memory record)",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@speed_options
@context_options()
@draft_options
@click.option("-p", "--prompt-tokens", type=int, default=64, show_default=True, help="Prompt length in tokens.")
@click.option("-g", "--gen-tokens", type=int, default=32, show_default=True, help="New tokens per sequence.")
@click.option("-b", "--batch", type=int, multiple=True, help="Batch size to measure (repeatable; default 1, 4, 16).")
@click.option("-r", "--repetitions", type=int, default=3, show_default=True, help="Timed runs per case.")
@click.option("--baseline", type=click.Choice(["transformers", "llama-cpp"]), default=None,
              help="Also measure plain transformers generate (or llama-cpp-python) and print the ratios.")
@click.option("--perplexity", is_flag=True, help="Also compute perplexity on the shipped public-domain text.")
@click.option("--cold", is_flag=True,
              help="Also time fresh processes: echo hi | lm-tokenize, echo hi | lm-generate -n 1 (in-process, and "
                   "through --server when given), beside python -c \"import click\" and \"import tokenizers\".")
@click.option("--loads", is_flag=True,
              help="Also time the model's first load (into an empty lmpipe cache) and its second (from what the "
                   "first wrote), each in a fresh process, and the cache's size; llama.cpp's load with "
                   "--baseline llama-cpp.")
@click.option("--server", default=None, metavar="URL",
              help="Also time the first token through this running lm-serve (and --pipeline with it).")
@click.option("--pipeline", type=click.IntRange(min=1), default=None, metavar="N",
              help="Also time a three-stage lm-generate pipeline of N records (with and without --server).")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), multiple=True, metavar="C",
              help="With --server: also send 2C streamed greedy chats of --gen-tokens tokens, C at a time, and "
                   "report the server's aggregate tokens/s (any OpenAI-compatible server; repeatable).")
@click.option("--skip-generate", is_flag=True,
              help="Only the whole-process cases (--loads, --cold, --server, --pipeline).")
@click.option("--synthetic", default=None, metavar="NAME[:TYPE]",
              help="Measure a random-weight GGUF of a real model's shape instead of -m: llama-3.2-1b, qwen2.5-1.5b, "
                   "gemma-2-2b, llama-2-7b (or tiny-llama); TYPE Q4_K_M (default), Q4_0 or F16. Written once, a "
                   "tensor at a time, into $LMPIPE_HOME/synthetic.")
@click.option("--threads", type=click.IntRange(min=1), default=None, envvar="LMPIPE_THREADS",
              help="torch CPU threads (default: torch's choice).")
def main(**options):
    """Measure prompt processing, time to first token, decode and batch throughput, and memory.

    Warm-up runs stay outside the clock; every case runs --repetitions times and reports min
    and median. JSON Lines in a pipe, a table on a terminal; progress on stderr.

    \b
      lm-bench --baseline transformers
      lm-bench --quantize int4 --compile --baseline transformers --perplexity -b 1
      lm-bench --synthetic llama-3.2-1b:Q4_K_M --compile --baseline llama-cpp -b 1
      lm-bench --cold -b 1 | jq .
      lm-bench --synthetic llama-3.2-1b:Q4_K_M --skip-generate --loads --baseline llama-cpp
      lm-bench --skip-generate --server http://127.0.0.1:8080 --pipeline 50
      lm-bench --skip-generate --server http://127.0.0.1:8000 -c 1 -c 16 -g 64
    """
    from lmpipe.cli.settings import bench_run
    from lmpipe.tasks.bench import run

    guarded("lm-bench", lambda: run(bench_run(options), tty=stdout_is_tty()))


if __name__ == "__main__":
    main()
