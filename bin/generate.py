"""lm-generate: generate text for every record with a local language model."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import (
    adapter_option,
    batch_option,
    context_options,
    draft_options,
    field_options,
    given_on_command_line,
    job_options,
    model_options,
    progress_option,
    remote_options,
    sampling_options,
    server_option,
    speed_options,
    template_options,
)
from lmpipe.records.pipe import stdout_is_tty
from lmpipe.vision.images import DEFAULT_MAX_PIXELS

FIELDS_READ = {
    "text": "The prompt (or the field named by --field).",
    "messages": "A chat, [{\"role\": ..., \"content\": ...}, ...], used instead of the text field when present; "
                "content may be a list of OpenAI parts: text, and image_url (a data: URL or a path) for a "
                "vision-language model.",
    "image": "For a vision-language model: an image path or data: URL (or a list of them), put before the prompt.",
    "images": "For a vision-language model: a list of image paths or data: URLs.",
    "image_b64": "For a vision-language model: an image as base64 (or a list of them).",
    "tools": "Tools the model may call, in OpenAI's form "
             "[{\"type\": \"function\", \"function\": {name, description, parameters}}].",
    "tool_choice": "This record's --tool-choice: auto, required, none, a tool name or {\"function\": {\"name\": ...}}.",
    "id": "With --output --resume: what the record is known by (else the SHA-256 of the whole record).",
    "agent": "From lm-template --agent: {file, model, run}: generate with that model and those [run] settings "
             "(max_new_tokens, temperature, top_p, top_k, repetition_penalty, seed, stop); options typed on the "
             "command line win. Another key in run is an error record.",
}
FIELDS_WRITTEN = {
    "generated": "The generated text (or the field named by --out).",
    "reasoning": "The model's reasoning, when it wrote some apart from the answer.",
    "tokens": "With --top-probs: each token's id, text, probability `p` and its likeliest alternatives `top`.",
    "stats": "input_tokens, output_tokens, ttft_s, tokens_per_s, total_s, finish_reason (and ttnt_s with --ttnt); "
             "for a vision-language model image_tokens: how many of the input tokens stand for images.",
    "manifest": "model, kind, revision or sha256, settings, device, dtype and versions: what made the text; "
                "for a record with an agent, `agent`: {file, applied, overridden}.",
    "json": "With --json-schema: the answer parsed, validated against the schema.",
    "tool_calls": "For records with tools: [{id, type: function, function: {name, arguments (a JSON string)}}]; "
                  "the text field is then null and stats.finish_reason is tool_calls.",
    "input_sha256": "With --output, for records without `id`: the SHA-256 of the input record, which --resume matches.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("prompt", required=False)
@model_options
@adapter_option
@field_options("generated")
@sampling_options
@template_options
@batch_option
@progress_option
@job_options
@speed_options
@context_options()
@draft_options
@server_option
@remote_options
@click.option("-s", "--system", default=None, help="System prompt for chat models.")
@click.option("--raw", is_flag=True, help="Plain completion: no chat template.")
@click.option("--stream", is_flag=True, help="In a pipe, write token events before each record.")
@click.option("-q", "--quiet", is_flag=True, help="On a terminal, print only the text (no stats line).")
@click.option("--top-probs", type=click.IntRange(min=0), default=0,
              help="Add each token's probability and its N likeliest alternatives.")
@click.option("--display-pause", type=click.IntRange(min=0), default=0, metavar="MS",
              help="On a terminal with --top-probs, pause between tokens.")
@click.option("--json-schema", default=None, metavar="FILE|JSON",
              help="Answer with JSON that validates against this schema (a file or inline); parsed into `json`. "
                   "Strict: an object without additionalProperties gets only its listed properties.")
@click.option("--regex", default=None, metavar="PATTERN", help="Answer with text that fully matches PATTERN.")
@click.option("--choice", multiple=True, help="Answer with exactly one of these (repeatable).")
@click.option("--prefix", default=None, metavar="TEXT", help="Start the answer with TEXT; the model continues it.")
@click.option("--tool-choice", default="auto", show_default=True, metavar="auto|required|none|NAME",
              help="For records with `tools`: may call (auto), must call (required), must not (none), "
                   "or must call NAME.")
@click.option("--ttnt", type=click.IntRange(min=1), default=None, metavar="N",
              help="Also report the time to the N-th token.")
@click.option("--image", "images", multiple=True, metavar="PATH",
              help="An image for a vision-language model, given with every record (repeatable; a path or a data: URL).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels than this (decompression bombs).")
def main(**options):
    """Generate text for every JSONL record on stdin (or for PROMPT).

    Reads the text from --field, or a chat from `messages`; writes the record back with the
    text in --out, plus `stats` and `manifest`. A record from `lm-template --agent` runs with
    its agent's model and [run] settings, except options typed on this command line.

    \b
      echo "What is the capital of France?" | lm-generate
      lm-generate "Write a haiku about pipes" --temperature 0.8 --seed 7
      lm-generate --json-schema person.json --output people.jsonl --resume < bios.jsonl
      lm-generate --choice yes --choice no "Is the sky blue?"
      lm-generate --shard 0/4 --output part0.jsonl --progress json < big.jsonl
      lm-template --agent translator.toml < texts.jsonl | lm-generate
      lm-generate -m HuggingFaceTB/SmolVLM-256M-Instruct --image cat.jpg "Describe this image"
    """
    from lmpipe.cli.settings import generate_run
    from lmpipe.tasks.generate import run

    guarded("lm-generate", lambda: run(generate_run(options, given_on_command_line()), tty=stdout_is_tty()))


if __name__ == "__main__":
    main()
