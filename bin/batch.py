"""lm-batch: run an OpenAI batch file through lm-serve's API, in-process or on a server."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import (
    batch_option,
    context_options,
    job_options,
    model_options,
    progress_option,
    server_option,
    speed_options,
)

FIELDS_READ = {
    "custom_id": "What the line is known by: in the output, and by --resume. Unique in the file.",
    "method": "POST.",
    "url": "/v1/chat/completions, /v1/completions or /v1/embeddings.",
    "body": "The request, as lm-serve (or OpenAI) takes it.",
}
FIELDS_WRITTEN = {
    "id": "batch_req_ and a random hex id.",
    "custom_id": "The input line's custom_id.",
    "response": "{status_code, request_id, body}: the server's answer, an error body {error: {message, type, "
                "code}} when status_code is not 200; null for a line that is not a request.",
    "error": "For a line that is not a request (not JSON, no custom_id, a duplicate custom_id, a method other "
             "than POST, an unknown url, stream): {code, message, line}; else null.",
    "input_sha256": "With --output, for lines without a custom_id: the SHA-256 of the line, which --resume matches.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@speed_options
@context_options()
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="In-process: requests decoding together, as lm-serve's --max-batch.")
@batch_option
@progress_option
@job_options(key="custom_id")
@server_option
@click.option("--chat-template", default=None, metavar="FILE|NAME", envvar="LMPIPE_CHAT_TEMPLATE",
              help="Render chat lines with this Jinja chat template (a file) or the model's template of this name, "
                   "as lm-serve --chat-template does (in this process only).")
def main(**options):
    """Run an OpenAI batch file on stdin: each line's body posted to its url, one output line each.

    In-process, each body goes to lm-serve's own app (the same validation, status codes and
    bodies as lm-serve); with --server, to that server over HTTP (lm-serve, vLLM, llama-server,
    Ollama); without --server, an lm-serve running here whose default model is this one, with the
    same settings, is posted to instead (--no-server: never). Output lines are OpenAI's batch output.
    --resume knows lines by custom_id; --shard
    splits the file across workers. Embeddings use the body's `model` (default all-MiniLM-L6-v2).

    \b
      lm-batch < requests.jsonl > results.jsonl
      lm-batch --output results.jsonl --resume < requests.jsonl
      lm-batch --shard 1/4 --output part1.jsonl < requests.jsonl
      lm-batch --server http://127.0.0.1:8080 < requests.jsonl
    """
    from lmpipe.cli.settings import batch_run
    from lmpipe.serve.batch import run

    guarded("lm-batch", lambda: run(batch_run(options)))


if __name__ == "__main__":
    main()
