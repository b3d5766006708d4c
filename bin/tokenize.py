"""lm-tokenize: text to token ids and back, with only the tokenizer loaded."""

from __future__ import annotations

import sys

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import job_options, progress_option
from lmpipe.models.resolve import DEFAULT_MODEL
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ = {
    "text": "The text to tokenize (or the field named by --field).",
    "ids": "With --decode: the token ids to turn back into text.",
    "messages": "A chat (when the record has no text field): tokenized as lm-generate prompts the model, "
                "rendered by the model's chat template with the generation prompt.",
}
FIELDS_WRITTEN = {
    "ids": "Token ids (under --out when given).",
    "tokens": "The tokens as strings.",
    "offsets": "[start, end] character offsets of each token in the text (fast tokenizers).",
    "special": "For each token, whether it is a special token (BOS, EOS, ...).",
    "added": "For each token, whether it was added to the vocabulary (not special).",
    "count": "Number of tokens.",
    "prompt": "For a `messages` record: the chat as the template rendered it (the offsets point into it).",
    "text": "With --decode: the decoded text (or the field named by --out).",
    "input_sha256": "With --output, for records without `id`: the SHA-256 of the input record, which --resume matches.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True, envvar="LMPIPE_MODEL",
              help="Model whose tokenizer to use (alias, folder, .gguf, or hub id).")
@click.option("--tokenizer", default=None, metavar="DIR", help="Load a tokenizer saved with --save instead.")
@click.option("-f", "--field", default="text", show_default=True, help="Record field holding the text.")
@click.option("-o", "--out", default=None,
              help="Put the results under this field (default: top level; `text` with --decode).")
@click.option("-d", "--decode", is_flag=True, help="Turn each record's `ids` back into text.")
@click.option("--no-special", is_flag=True, help="Do not add the tokenizer's special tokens (BOS, ...).")
@click.option("--add-token", multiple=True, help="Add a token to the vocabulary (repeatable).")
@click.option("--add-special-token", multiple=True, help="Add a special token (repeatable).")
@click.option("--save", default=None, metavar="DIR", help="Save the (modified) tokenizer to DIR.")
@progress_option
@job_options
def main(**options):
    """Tokenize the text of every JSONL record on stdin: ids, tokens, offsets, flags, count.

    \b
      echo "Hello, world" | lm-tokenize
      lm-tokenize --add-token "<tool>" --save my-tok < /dev/null
      echo '{"ids": [19556, 28]}' | lm-tokenize --decode
    """
    from lmpipe.cli.settings import tokenize_run
    from lmpipe.tasks.tokenize import run

    guarded("lm-tokenize", lambda: run(tokenize_run(options), tty=stdout_is_tty(), stdin_tty=sys.stdin.isatty()))


if __name__ == "__main__":
    main()
