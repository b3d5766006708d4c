"""lm-summarize: summarize the text of every record with a summarization or chat model."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import batch_option, field_options, job_options, model_options, progress_option
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ = {"text": "The text to summarize (choose another field with --field)."}
FIELDS_WRITTEN = {
    "summary": "The summary (choose the field with --out).",
    "chunks": "How many window-sized chunks the text was summarized in (map-reduce when more than 1).",
    "rounds": "Model passes: 1 for a text that fit, more when summaries of chunks were summarized again.",
    "stats": "input_tokens, output_tokens, ttft_s, tokens_per_s, total_s, finish_reason (summed over chunks).",
    "manifest": "Model, task prefix or instruction, generation settings, window, device, dtype, versions.",
    "error": "Why this record could not be summarized (with `line`).",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@field_options("summary")
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Most tokens per summary (chat models: most new tokens; default 256).")
@click.option("--min-length", type=click.IntRange(min=0), default=None,
              help="Fewest tokens per summary (seq2seq models).")
@click.option("--num-beams", type=click.IntRange(min=1), default=None,
              help="Beam search width (default: the model's generation config).")
@click.option("--window", type=click.IntRange(min=8), default=None,
              help="Most input tokens per chunk (default: the model's window).")
@batch_option
@progress_option
@job_options
def main(**options):
    """Summarize the text of every JSONL record on stdin.

    Seq2seq models (BART, PEGASUS, T5 with its prefix, any encoder-decoder) summarize as
    trained; a chat model by instruction. A text longer than the window is summarized
    map-reduce: chunk summaries, then a summary of those; `chunks` says how many.

    \b
      lm-summarize < articles.jsonl
      lm-summarize -m facebook/bart-large-cnn --num-beams 4 --max-length 142 < news.jsonl
    """
    from lmpipe.cli.settings import summarize_run
    from lmpipe.tasks.summarize import run

    guarded("lm-summarize", lambda: run(summarize_run(options), tty=stdout_is_tty()))


if __name__ == "__main__":
    main()
