"""lm-translate: translate the text of every record with a translation or chat model."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import batch_option, field_options, job_options, model_options, progress_option
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ = {"text": "The text to translate (choose another field with --field)."}
FIELDS_WRITTEN = {
    "translation": "The translated text (choose the field with --out).",
    "chunks": "How many window-sized pieces the text was translated in (1 when it fit).",
    "stats": "input_tokens, output_tokens, ttft_s, tokens_per_s, total_s, finish_reason (summed over pieces).",
    "manifest": "Model, languages and their codes, generation settings, window, device, dtype, versions.",
    "error": "Why this record could not be translated (with `line`).",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@field_options("translation")
@click.option("--from", "source", default=None, metavar="LANG", envvar="LMPIPE_FROM",
              help="Source language: a plain code (en) or the model's own (en_XX, eng_Latn).")
@click.option("--to", "target", default=None, metavar="LANG", envvar="LMPIPE_TO",
              help="Target language (es, de, ...); a one-pair Marian model knows its own.")
@click.option("--num-beams", type=click.IntRange(min=1), default=None,
              help="Beam search width (default: the model's generation config).")
@click.option("--max-length", type=click.IntRange(min=2), default=None,
              help="Most tokens per translated piece (chat models: most new tokens; default 512).")
@click.option("--window", type=click.IntRange(min=8), default=None,
              help="Most input tokens per piece (default: the model's window).")
@batch_option
@progress_option
@job_options
def main(**options):
    """Translate the text of every JSONL record on stdin.

    Seq2seq models (Marian opus-mt, mBART-50, NLLB, M2M100, T5) get their own language codes,
    mapped from --from/--to; a chat model translates by instruction. A text longer than the
    model's window is translated sentence-bounded piece by piece and joined, never cut.

    \b
      echo "The weather is nice today." | lm-translate --to es
      lm-translate -m Helsinki-NLP/opus-mt-en-de < notes.jsonl
      lm-translate -m facebook/nllb-200-distilled-600M --from en --to fr --num-beams 4 < docs.jsonl
    """
    from lmpipe.cli.settings import translate_run
    from lmpipe.tasks.translate import run

    guarded("lm-translate", lambda: run(translate_run(options), tty=stdout_is_tty()))


if __name__ == "__main__":
    main()
