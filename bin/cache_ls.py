"""lm-cache-ls: the models on disk, in the Hugging Face cache and lmpipe's own."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ: dict[str, str] = {}
FIELDS_WRITTEN = {
    "id": "Hub repo id (org/name), or the folder name of a converted GGUF model.",
    "kind": "`hub` (Hugging Face cache) or `converted` (a GGUF converted by lmpipe).",
    "size_bytes": "Bytes on disk (a blob shared by two revisions counts once).",
    "revisions": "Number of cached revisions.",
    "files": "Number of files on disk.",
    "last_accessed": "Latest access to a file, ISO 8601 UTC.",
    "last_modified": "Latest change to a file, ISO 8601 UTC.",
    "path": "The model's folder in the cache.",
    "source": "converted: the GGUF file it was converted from.",
    "alias": "converted: `smollm2` for the embedded default model.",
    "revision": "--model: the commit hash (converted: the GGUF's sha256).",
    "refs": "--model: branches and tags pointing at the revision.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", multiple=True, metavar="ID",
              help="One record per cached revision of this model (repeatable).")
@click.option("--cache-dir", default=None, metavar="DIR", envvar="HF_HUB_CACHE",
              help="The Hugging Face cache to scan (default: $HF_HUB_CACHE, else $HF_HOME/hub).")
@click.option("--json", "json_out", is_flag=True, help="Write JSONL even on a terminal.")
def main(**options):
    """List the models in the Hugging Face cache and in lmpipe's cache, largest first.

    On a terminal a table with human sizes and the total; in a pipe one JSON record per model.
    lmpipe's cache is $LMPIPE_HOME/models (converted GGUF models, the embedded default among them).

    \b
      lm-cache-ls
      lm-cache-ls --model HuggingFaceTB/SmolLM2-135M-Instruct
      lm-cache-ls | jq 'select(.size_bytes > 1e9)' | lm-cache-rm --dry-run
    """
    from lmpipe.tasks.cache_ls import run

    guarded("lm-cache-ls", lambda: run(tty=stdout_is_tty(), **options))


if __name__ == "__main__":
    main()
