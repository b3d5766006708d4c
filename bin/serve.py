"""lm-serve: keep a model warm behind an OpenAI-compatible HTTP API on 127.0.0.1."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import model_options, speed_options

FIELDS_READ: dict[str, str] = {}
FIELDS_WRITTEN: dict[str, str] = {}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@speed_options
@click.option("--host", default="127.0.0.1", show_default=True, envvar="LMPIPE_HOST",
              help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, envvar="LMPIPE_PORT")
@click.option("--keep-alive", type=float, default=300.0, show_default=True, metavar="SECONDS",
              help="Unload the model after this long without requests (0: never).")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests decoding together: rows of the KV cache that requests join and leave between "
                   "steps (continuous batching, Llama family; other models batch per arrival).")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests that may wait; past it the server answers 503 with Retry-After.")
@click.option("--preload", is_flag=True, help="Load the model now rather than at the first request.")
def main(**options):
    """Serve a model with an OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

    Tools use it with --server URL or LMPIPE_SERVER=URL and write the same records as in-process.
    Requests may ask for structured output (`response_format` json_schema or json_object; lmpipe's
    `regex`, `choice` and `prefix`) and call functions (`tools`, `tool_choice`), as lm-generate does.
    Requests join the running batch between decode steps, and a prompt that starts like a recent
    one (a chat template's system prompt) reuses its keys and values. /v1/embeddings embeds with
    the request's `model` (default: the embedded all-MiniLM-L6-v2), loaded on its first request.
    /tokenize and /detokenize answer as vLLM's do: a `prompt` (or chat `messages`) to `tokens`,
    `count` and `max_model_len`, and `tokens` back to `prompt`, with the server's own tokenizer.

    GET /metrics is Prometheus text with vLLM's metric names, types and buckets, each series
    labelled model_name (the served id) and engine ("0"), so a vLLM dashboard reads it. Gauges:
    vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc (running rows'
    tokens over --max-batch x the model's context). Counters: vllm:prefix_cache_queries_total and
    vllm:prefix_cache_hits_total (prompt tokens looked up in the prefix cache, and served by it),
    vllm:prompt_tokens_total, vllm:generation_tokens_total, vllm:request_success_total (by
    finished_reason: stop, length, abort). Histograms: vllm:time_to_first_token_seconds,
    vllm:inter_token_latency_seconds (each token from the one before),
    vllm:e2e_request_latency_seconds. Times count from a request's admission into the batch, not
    its arrival; each of `n` choices counts as a request.

    \b
      lm-serve --port 8080 --keep-alive 600 &
      echo "What is the capital of France?" | lm-generate --server http://127.0.0.1:8080
      curl -s 127.0.0.1:8080/v1/chat/completions -d '{"model":"smollm2","messages":[{"role":"user","content":"hi"}]}'
      curl -s 127.0.0.1:8080/v1/chat/completions -d '{"messages":[{"role":"user","content":"A cat as JSON"}],
        "response_format":{"type":"json_object"}}'
      curl -s 127.0.0.1:8080/v1/embeddings -d '{"model":"all-minilm-l6-v2","input":["a cat","a dog"]}'
      curl -s 127.0.0.1:8080/tokenize -d '{"prompt":"Hello, world"}'
    """
    from lmpipe.cli.settings import serve_run
    from lmpipe.serve.run import run

    guarded("lm-serve", lambda: run(serve_run(options)))


if __name__ == "__main__":
    main()
