"""lm-similar: the records nearest a query by cosine, from lm-embed output."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded

FIELDS_READ = {
    "embedding": "The record's vector (or the field named by --field): floats, or base64 float32.",
    "manifest.model": "For a text QUERY: the model the records were embedded with, which embeds the query too.",
    "id": "With --record: a record with the query record's id is skipped (it is not its own neighbour).",
}
FIELDS_WRITTEN = {
    "score": "Cosine similarity to the query, from -1 to 1; records come out best first.",
    "error": "Why a record was left out: no vector, or not as many dimensions as the query (with `line`).",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("query", required=False)
@click.option("--vector", default=None, metavar="JSON|BASE64",
              help="Query with this vector: a JSON list of floats, or base64 float32 (no model loads).")
@click.option("--record", default=None, metavar="JSON",
              help="Query with this record's vector, e.g. a line of lm-embed output (no model loads).")
@click.option("-n", "--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many records to write.")
@click.option("-f", "--field", default="embedding", show_default=True, help="Record field holding the vector.")
@click.option("-m", "--model", default=None, envvar="LMPIPE_EMBED_MODEL",
              help="For a text QUERY: embed it with this model (default: the records' manifest.model).")
def main(**options):
    """Write the --top records on stdin nearest a query by cosine similarity, best first, with `score`.

    The query is a text (embedded with the records' own model), --vector or --record.

    \b
      lm-embed < docs.jsonl > vectors.jsonl
      lm-similar "a cat on a mat" --top 3 < vectors.jsonl
      lm-similar --record "$(head -1 vectors.jsonl)" < vectors.jsonl
      lm-similar --vector '[0.1, 0.2, 0.3]' < my-vectors.jsonl
    """
    from lmpipe.cli.settings import similar_run
    from lmpipe.tasks.similar import run

    guarded("lm-similar", lambda: run(similar_run(options)))


if __name__ == "__main__":
    main()
