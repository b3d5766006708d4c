"""lm-serve: keep a model warm behind an OpenAI-compatible HTTP API on 127.0.0.1."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import context_options, served_models_options, speed_options
FIELDS_READ: dict[str, str] = {}
FIELDS_WRITTEN: dict[str, str] = {  # the --log file's records, one per generation request
    "time": "With --log: when the request came (UTC, ISO 8601).",
    "client": "The client's address, host:port.",
    "endpoint": "/v1/chat/completions or /v1/completions.",
    "status": "The HTTP status answered (499: the client left a stream before its end).",
    "id": "The response's id.",
    "model, messages, prompt": "The request's own, as sent.",
    "generated": "The answer: the first choice's text (`choices`: every one, when there are several).",
    "stats": "The first choice's stats, as lm-generate's records have them (ttft_s, tokens_per_s, total_s, ...).",
    "usage": "The response's usage.",
    "manifest": "The model's identity, sampling, device, dtype and versions (an error's: the model only).",
    "error, code": "Why the request was refused or failed, and the error's code.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@served_models_options
@speed_options
@context_options("--max-model-len")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="LMPIPE_HOST",
              help="Address to listen on (127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, envvar="LMPIPE_PORT")
@click.option("--keep-alive", type=float, default=300.0, show_default=True, metavar="SECONDS",
              help="Unload a model after this long without requests (0: never); per model: --model-option.")
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests decoding together: rows of the KV cache that requests join and leave between "
                   "steps (continuous batching, Llama family; other models batch per arrival).")
@click.option("--max-queue", type=click.IntRange(min=1), default=64, show_default=True,
              help="Requests that may wait; past it the server answers 503 with Retry-After.")
@click.option("--threads", type=click.IntRange(min=1), default=None, envvar="LMPIPE_THREADS",
              help="torch CPU threads for the models (default: one fewer than torch's own, leaving a core to stream the answers).")
@click.option("--preload", is_flag=True, help="Load the -m models now (up to --max-models) rather than at their first request.")
@click.option("--log", default=None, metavar="FILE",
              help="Append every request and its answer (or error) to FILE as a JSONL record, fsync'd; "
                   "lm-stats < FILE summarises them per model.")
@click.option("--log-rotate", type=click.FloatRange(min=0), default=100.0, show_default=True, metavar="MB",
              help="Rotate the --log file past this size (FILE.1 ... FILE.5 kept; 0: never).")
@click.option("--allow-local-images", is_flag=True,
              help="A chat's image_url may be a path on this machine (file:// or plain); else only data: URLs.")
def main(**options):
    """Serve models with an OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

    Tools use it with --server URL or LMPIPE_SERVER=URL and write the same records as in-process.

    Several models: `-m A -m B` serves both (A answers requests that name no `model`); a request
    naming another model that resolves here as --model would (an alias, a folder, a .gguf file,
    a hub repo in the cache) loads it with the server's settings, unless --listed-only; any
    other name is a 404, as vLLM answers. Each model unloads after its own --keep-alive idle;
    with --max-models N, loading one more first unloads the least recently used idle model (or
    waits for one to become idle). --model-option MODEL KEY=VALUE sets quantize, cache,
    compile, device, dtype, attention, keep-alive or max-batch for one -m model. /v1/models lists
    every model the server holds or has held, the default first, with `loaded`,
    `keep_alive_s` and, while loaded, `expires_in_s`.
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

    --log FILE appends each generation request and its answer, or its error, to FILE as one JSONL
    record (see FIELDS), fsync'd (a whole answer's before it is sent, a stream's when it ends), so
    `lm-stats < FILE` gives the server's time to first token per model; the file rotates past
    --log-rotate MB.

    \b
      lm-serve --port 8080 --keep-alive 600 &
      lm-serve -m smollm2 -m ./my-model --model-option ./my-model quantize=int8 --max-models 1 &
      echo "What is the capital of France?" | lm-generate --server http://127.0.0.1:8080
      curl -s 127.0.0.1:8080/v1/chat/completions -d '{"model":"smollm2","messages":[{"role":"user","content":"hi"}]}'
      curl -s 127.0.0.1:8080/v1/chat/completions -d '{"messages":[{"role":"user","content":"A cat as JSON"}],
        "response_format":{"type":"json_object"}}'
      curl -s 127.0.0.1:8080/v1/embeddings -d '{"model":"all-minilm-l6-v2","input":["a cat","a dog"]}'
      curl -s 127.0.0.1:8080/tokenize -d '{"prompt":"Hello, world"}'
      curl -s 127.0.0.1:8080/metrics | grep vllm:time_to_first_token_seconds_count
      lm-serve --log serve.log & ... ; lm-stats < serve.log
    """
    from lmpipe.cli.settings import serve_run
    from lmpipe.serve.run import run

    guarded("lm-serve", lambda: run(serve_run(options)))


if __name__ == "__main__":
    main()
