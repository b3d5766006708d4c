"""lm-serve: keep a model warm behind an OpenAI-compatible HTTP API on 127.0.0.1."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import context_options, served_models_options, speed_options
from lmpipe.vision.images import DEFAULT_MAX_PIXELS

FIELDS_READ: dict[str, str] = {}
FIELDS_WRITTEN: dict[str, str] = {  # the --log file's records, one per generation request
    "time": "With --log: when the request came (UTC, ISO 8601).",
    "client": "The client's address, host:port.",
    "endpoint": "/v1/chat/completions or /v1/completions.",
    "status": "The HTTP status answered (499: the client left before the answer's end, streamed or not).",
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
              help="torch CPU threads for the models (default: one fewer than torch's own, leaving a core to stream "
                   "the answers).")
@click.option("--preload", is_flag=True,
              help="Load the -m models now (up to --max-models) rather than at their first request.")
@click.option("--log", default=None, metavar="FILE",
              help="Append every request and its answer (or error) to FILE as a JSONL record, fsync'd; "
                   "lm-stats < FILE summarises them per model.")
@click.option("--log-rotate", type=click.FloatRange(min=0), default=100.0, show_default=True, metavar="MB",
              help="Rotate the --log file past this size (FILE.1 ... FILE.5 kept; 0: never).")
@click.option("--chat-template", default=None, metavar="FILE|NAME", envvar="LMPIPE_CHAT_TEMPLATE",
              help="Render chats with this Jinja chat template (a file) or the model's template of this name, "
                   "in place of the model's own; per model: --model-option MODEL chat-template=FILE.")
@click.option("--lora", multiple=True, metavar="NAME=PATH[:SCALE]",
              help="Serve the first -m model with this LoRA adapter (PEFT format) as model NAME: a request whose "
                   "`model` is NAME gets it, its row sharing the base model's batches with other adapters' and "
                   "the base's own; /v1/models lists it with its `parent`. Repeatable.")
@click.option("--allow-local-images", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="A chat's image_url may be a path (file:// or plain) to a file under DIR; else only data: URLs.")
@click.option("--api-key", "api_key", multiple=True, envvar="LMPIPE_API_KEY", metavar="KEY",
              help="Require `Authorization: Bearer KEY` on every route but /health (401 without it); repeat for "
                   "several keys (LMPIPE_API_KEY: space-separated).")
@click.option("--api-key-file", default=None, metavar="FILE",
              help="Keys accepted, one a line (with or besides --api-key).")
@click.option("--allowed-origins", "allowed_origins", multiple=True, envvar="LMPIPE_ALLOWED_ORIGINS", metavar="ORIGIN",
              help="A browser origin (https://app.example) served, with CORS; repeat for several, * for any. "
                   "Requests from other origins get 403.")
@click.option("--max-body", type=click.FloatRange(min=0, min_open=True), default=32.0, show_default=True, metavar="MB",
              help="Largest request body; past it the answer is 413, before the body is read.")
@click.option("--read-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="A client has this long to send a request's headers, then as long for its body "
                                      "(slow clients are cut off: 408).")
@click.option("--max-n", type=click.IntRange(min=1), default=16, show_default=True,
              help="The most choices (`n`) a request may ask for (more: 400).")
@click.option("--limit-concurrency", type=click.IntRange(min=1), default=512, show_default=True,
              help="Requests in the server at once; past it a 503 with Retry-After (open connections: 4x this).")
@click.option("--max-images-per-request", type=click.IntRange(min=0), default=8, show_default=True,
              help="Images one chat request may carry; more is a 400 before any is read.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Pixels an image may have (width x height), checked before it is decoded; more is a 400.")
def main(**options):
    """Serve models with an OpenAI-compatible API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

    Tools use it with --server URL or LMPIPE_SERVER=URL and write the same records as in-process.

    On a network: --api-key wants `Authorization: Bearer KEY` on every route but /health (401);
    bound to loopback, only loopback Host headers are answered (400: DNS rebinding); a browser's
    Origin must be in --allowed-origins (403), which also turns on CORS; POST bodies must be
    application/json (415) of at most --max-body MB (413, before reading it); a request's headers,
    then its body, must arrive within --read-timeout seconds; `n` is at most --max-n. TLS is a
    reverse proxy's job.

    Several models: `-m A -m B` serves both (A answers requests that name no `model`); a request
    naming another model that is an alias or a hub repo in the cache loads it with the server's
    settings, unless --listed-only; a folder or .gguf file only with --allow-model-paths; any
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
    the request's `model` (default: the embedded all-MiniLM-L6-v2), loaded on its first request,
    counted against --max-models and unloaded after --keep-alive like the generation models.
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
      curl -s 127.0.0.1:8080/v1/chat/completions --json '{"model":"smollm2","messages":[{"role":"user","content":"hi"}]}'
      curl -s 127.0.0.1:8080/v1/chat/completions --json '{"messages":[{"role":"user","content":"A cat as JSON"}],
        "response_format":{"type":"json_object"}}'
      curl -s 127.0.0.1:8080/v1/embeddings --json '{"model":"all-minilm-l6-v2","input":["a cat","a dog"]}'
      curl -s 127.0.0.1:8080/tokenize --json '{"prompt":"Hello, world"}'
      curl -s 127.0.0.1:8080/metrics | grep vllm:time_to_first_token_seconds_count
      lm-serve --log serve.log & ... ; lm-stats < serve.log
    """
    from lmpipe.cli.settings import serve_run
    from lmpipe.serve.run import run

    guarded("lm-serve", lambda: run(serve_run(options)))


if __name__ == "__main__":
    main()
