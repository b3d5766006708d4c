"""lm-stats: latency and speed of any lmpipe output, per model."""

from __future__ import annotations

import sys

import click

from lmpipe.cli.edge import guarded
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ = {
    "manifest.model": "Groups the records (null for records without a manifest; --by picks another field).",
    "stats": "ttft_s, tokens_per_s and total_s are summarized.",
    "error": "Counts the record as an error.",
}
FIELDS_WRITTEN = {
    "records": "How many records were read.",
    "errors": "How many of them were errors.",
    "models": "Per group: {model (the --by value), count, errors, ttft_s, tokens_per_s, total_s}, "
              "each metric {n, p50, p95, max}.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--by", default="manifest.model", show_default=True, metavar="FIELD",
              help="Group by this field (dotted path), e.g. manifest.device or manifest.task.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object even on a terminal.")
def main(by: str, as_json: bool):
    """Summarize any lmpipe output on stdin: count, errors, p50/p95/max of ttft, tokens/s, total time, per model.

    In a pipe, one JSON object; on a terminal, a table.

    \b
      lm-generate < prompts.jsonl | tee out.jsonl | lm-stats
      lm-stats < out.jsonl | jq '.models[] | {model, ttft_p95: .ttft_s.p95}'
      lm-stats --by manifest.device < out.jsonl
    """
    from lmpipe.tasks.stats import run

    guarded("lm-stats", lambda: run(stdout_is_tty(), sys.stdin.buffer, by, as_json))


if __name__ == "__main__":
    main()
