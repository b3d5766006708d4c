"""lm-cache-rm: delete cached models or some of their revisions."""

from __future__ import annotations

import sys

import click

from lmpipe.cli.edge import guarded
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ = {
    "id": "The model to delete (lm-cache-ls records; a plain line is an id too).",
    "path": "The model's (or a revision's) folder; wins over `id`, refused outside the cache folders.",
    "revision": "Delete only this revision (lm-cache-ls --model records).",
}
FIELDS_WRITTEN = {
    "id": "The model.",
    "kind": "`hub` or `converted`.",
    "path": "The model's folder.",
    "revisions": "The commits deleted.",
    "whole": "True when the whole model folder goes.",
    "freed_bytes": "Exact bytes of the files removed (or that --dry-run would remove).",
    "dry_run": "True when nothing was deleted.",
    "deleted": "True when the files are gone.",
    "error": "Why a model named in the input was not deleted.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("ids", nargs=-1, metavar="[ID|PATH]...")
@click.option("-r", "--revision", multiple=True, metavar="REV",
              help="Delete only this revision: a commit hash prefix or a ref name (repeatable).")
@click.option("-n", "--dry-run", is_flag=True, help="Report what would be deleted and the bytes freed; delete nothing.")
@click.option("-y", "--yes", is_flag=True, help="Delete without asking (required in a pipe).")
@click.option("--cache-dir", default=None, metavar="DIR", envvar="HF_HUB_CACHE",
              help="The Hugging Face cache (default: $HF_HUB_CACHE, else $HF_HOME/hub).")
def main(**options):
    """Delete cached models, or chosen revisions, named as arguments or in lm-cache-ls records on stdin.

    A blob still used by a kept revision is kept. On a terminal it shows what goes and asks; in a
    pipe it deletes only with --yes. Nothing outside the cache folders is ever touched.

    \b
      lm-cache-rm HuggingFaceTB/SmolLM2-135M-Instruct --revision 1a2b3c --dry-run
      lm-cache-ls | jq 'select(.size_bytes > 1e9)' | lm-cache-rm --yes
      lm-cache-ls --model org/name | jq 'select(.refs == [])' | lm-cache-rm --yes
    """
    from lmpipe.tasks.cache_rm import run

    guarded("lm-cache-rm", lambda: run(tty=stdout_is_tty(), stdin_tty=sys.stdin.isatty(), **options))


if __name__ == "__main__":
    main()
