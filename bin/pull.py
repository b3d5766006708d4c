"""lm-pull: download a model snapshot into the Hugging Face cache."""

from __future__ import annotations

import sys

import click

from lmpipe.cli.edge import guarded
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ = {"id": "The repo to pull (org/name[@revision][:TAG]) when no argument names one; also `model` or `text`."}
FIELDS_WRITTEN = {
    "id": "The repo id.",
    "revision": "The commit hash now in the cache.",
    "ref": "The branch or tag asked for, when not a commit hash.",
    "path": "The snapshot folder.",
    "files": "Files in the snapshot folder.",
    "size_bytes": "Bytes of those files.",
    "downloaded_bytes": "Bytes fetched by this run (0 when everything was cached).",
    "seconds": "Wall time of the pull.",
    "file": "The GGUF file downloaded, when a :TAG named one.",
    "adapters": "With --merge: each adapter merged (path, scale, sha256); `path` is then the merged folder.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("repos", nargs=-1, metavar="[REPO[@REVISION][:TAG]]...")
@click.option("-r", "--revision", default=None, metavar="REV", help="Branch, tag or commit hash (default: main).")
@click.option("-i", "--include", multiple=True, metavar="GLOB", help="Only files matching this pattern (repeatable).")
@click.option("-x", "--exclude", multiple=True, metavar="GLOB", help="Skip files matching this pattern (repeatable).")
@click.option("--cache-dir", default=None, metavar="DIR", envvar="HF_HUB_CACHE",
              help="The Hugging Face cache (default: $HF_HUB_CACHE, else $HF_HOME/hub).")
@click.option("--progress", type=click.Choice(["auto", "bar", "json", "none"]), default="auto", show_default=True,
              envvar="LMPIPE_PROGRESS", help="On stderr: a bar (auto on a terminal) or JSON events (auto otherwise).")
@click.option("--adapter", multiple=True, metavar="PATH[:SCALE]",
              help="With --merge: a LoRA adapter in PEFT's format to merge, times SCALE (default 1); repeatable.")
@click.option("--merge", default=None, metavar="DIR",
              help="Write the one model named (as -m takes it) with the --adapter's merged into its weights "
                   "(peft's merge_and_unload) to DIR, as safetensors; -m DIR then runs it.")
def main(**options):
    """Download a model snapshot from the Hugging Face Hub into the cache, resuming cut transfers.

    The token comes from HF_TOKEN, the hub from HF_ENDPOINT; with HF_HUB_OFFLINE=1 it only checks
    the cache. Files land under their final name only when complete. A :TAG (Q4_K_M, Q8_0, ...)
    downloads only the repo's GGUF file of that quantization type; -m org/name:TAG then runs it.

    \b
      lm-pull HuggingFaceTB/SmolLM2-135M-Instruct
      lm-pull org/name@v1.0 --include '*.json' --include '*.safetensors'
      lm-pull bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M
      lm-pull org/name --progress json 2> progress.jsonl | jq .path
      lm-pull org/name --adapter ./my-lora --merge ./merged && lm-generate -m ./merged
    """
    from lmpipe.tasks.pull import run

    guarded("lm-pull", lambda: run(tty=stdout_is_tty(), stdin_tty=sys.stdin.isatty(),
                                   stderr_tty=sys.stderr.isatty(), **options))


if __name__ == "__main__":
    main()
