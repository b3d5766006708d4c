"""lm-dash: a dashboard that builds, runs and watches pipelines of lmpipe tools; chat; tokens; models."""

from __future__ import annotations

import os
import sys

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import context_options, template_options

SCREENS = ("pipeline", "chat", "tokens", "models")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("pipeline_file", required=False, metavar="[PIPELINE]")
@click.option("--run", "run_file", default=None, metavar="FILE",
              help="Run a saved pipeline headless from stdin to stdout, with the tools' exit codes.")
@click.option("--screen", type=click.Choice(SCREENS), default="pipeline", show_default=True, help="Screen to open on.")
@click.option("-m", "--model", default="smollm2", show_default=True, envvar="LMPIPE_MODEL",
              help="Model for the chat and tokens screens.")
@template_options
@context_options()
def main(pipeline_file: str | None, run_file: str | None, screen: str, model: str, **chat: object):
    """Build, run and watch pipelines of lm-* tools; chat; see tokens; manage cached models.

    In a pipe, lm-dash reads stdin as the pipeline's input, then takes the keyboard from the
    terminal; on exit it writes the last run's output to stdout.

    \b
      lm-dash my-pipeline.json
      cat questions.jsonl | lm-dash my-pipeline.json > answers.jsonl
      lm-dash --run my-pipeline.json < questions.jsonl > answers.jsonl
    """
    from lmpipe.tui.pipeline import Pipeline, run_headless

    if run_file:
        guarded("lm-dash", lambda: run_headless(Pipeline.load(run_file)))
    guarded("lm-dash", lambda: interactive(pipeline_file, screen, model, chat))


def interactive(pipeline_file: str | None, screen: str, model: str, chat: dict) -> int:
    from lmpipe.chat.prompts import PromptSettings
    from lmpipe.cli.settings import template_settings
    from lmpipe.errors import UsageError
    from lmpipe.models.loading import ModelSettings
    from lmpipe.tui.app import create_app
    from lmpipe.tui.pipeline import Pipeline
    from lmpipe.tui.pool import ChatSettings, ModelPool

    defaults = ChatSettings(template=PromptSettings(**template_settings(chat)),
                            reasoning_budget=chat.get("reasoning_budget"))
    # The chat and tokens screens' models hold the context asked for (the chat's gauge shows how full it is).
    pool = ModelPool(ModelSettings(ctx_size=chat.get("ctx_size"), rope_scaling=chat.get("rope_scaling"),
                                     rope_factor=chat.get("rope_factor")))

    pipeline = Pipeline.load(pipeline_file) if pipeline_file else None
    text = ""
    if not sys.stdin.isatty():
        text = sys.stdin.buffer.read().decode("utf-8", "replace")
        try:  # take the keyboard back from the terminal, as toolong does
            tty = os.open("/dev/tty", os.O_RDONLY)
        except OSError:
            raise UsageError("stdin is a pipe and there is no terminal to read keys from; use --run") from None
        os.dup2(tty, 0)
        os.close(tty)
    app = create_app(pipeline=pipeline, input_text=text, pipeline_path=pipeline_file, model=model, screen=screen,
                     chat=defaults, pool=pool)
    app.run()
    if not sys.stdout.isatty() and app.last_output:
        sys.stdout.buffer.write(app.last_output)
        sys.stdout.flush()
    return 0


FIELDS_READ = {"*": "with --run or in a pipe: whatever the pipeline's first tool reads"}
FIELDS_WRITTEN = {"*": "with --run, the records the pipeline's last tool writes"}

if __name__ == "__main__":
    main()
