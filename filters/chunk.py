"""lm-chunk: split long texts into overlapping, token-bounded chunks that reassemble exactly."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import progress_option
from lmpipe.models.resolve import DEFAULT_MODEL

FIELDS_READ = {"text": "The text to split (--field).", "id": "The source id carried by every chunk (--id-field)."}
FIELDS_WRITTEN = {
    "text": "This chunk's text (in --field), every other input field passed through.",
    "source": "The input's id (--id-field), or its line number when it has none.",
    "chunk": "This chunk's index, from 0.",
    "chunks": "How many chunks the source text made.",
    "start": "Character offset of the chunk in the source text.",
    "end": "Character offset just past the chunk; the next chunk starts before it by the overlap.",
    "tokens": "Tokens of this chunk, tokenized on its own (never more than --max-tokens).",
    "error": "Why a record could not be chunked (with `line`).",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True, envvar="LMPIPE_MODEL",
              help="Model whose tokenizer counts the tokens (alias, folder, .gguf, or hub id).")
@click.option("--tokenizer", default=None, metavar="PATH",
              help="A tokenizer.json file (or a folder holding one) instead.")
@click.option("-n", "--max-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Most tokens per chunk.")
@click.option("--overlap", type=click.IntRange(min=0), default=64, show_default=True,
              help="Tokens each chunk shares with the one before it.")
@click.option("-f", "--field", default="text", show_default=True, help="Record field holding the text.")
@click.option("--id-field", default="id", show_default=True, help="Record field naming the source.")
@progress_option
def main(**options):
    """Split the text of every JSONL record on stdin into chunks of at most --max-tokens tokens.

    One output record per chunk. To reassemble a source, take its chunks in order and append
    each chunk's text from (previous end - its start) on; the result is the original exactly.

    \b
      lm-chunk --max-tokens 256 --overlap 32 < book.jsonl | lm-summarize
      lm-chunk --tokenizer my-tok/tokenizer.json -n 128 < docs.jsonl
    """
    from lmpipe.cli.settings import chunk_run
    from lmpipe.tasks.chunk import run

    guarded("lm-chunk", lambda: run(chunk_run(options)))


if __name__ == "__main__":
    main()
