"""lm-template: render every record into a prompt or a chat, from a template or an agent file."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import job_options, progress_option

FIELDS_READ = {"*": "Every field of the record is a template variable ({{ text }}, {{ title }}, ...).",
               "text": "An agent's user turn when it has no `user` template and no TEMPLATE is given (--field)."}
FIELDS_WRITTEN = {
    "text": "The rendered prompt, for a plain template (choose the field with --out).",
    "messages": "[{role: system, content}, {role: user, content}] with --system or --agent.",
    "agent": "With --agent, what the file asks of the run: {file, model ([engine] uri), run ([run] table)}.",
    "error": "A missing variable or a template error, for this record (with `line`).",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("template", required=False)
@click.option("-F", "--file", default=None, metavar="PATH", help="Read the template from a file.")
@click.option("-a", "--agent", default=None, metavar="TOML",
              help="An agent file: [agent], [template], [engine], [run].")
@click.option("-s", "--system", default=None, help="A system prompt template: write `messages` instead of text.")
@click.option("-f", "--field", default="text", show_default=True, help="The agent's user turn when it has no template.")
@click.option("-o", "--out", default="text", show_default=True, help="Field for a rendered plain prompt.")
@click.option("--var", multiple=True, metavar="NAME=VALUE", help="A default variable (records' own fields win).")
@progress_option
@job_options
def main(**options):
    """Render every JSONL record on stdin with a Jinja template; the record's fields are its variables.

    A variable the record lacks makes that record an error record, never an empty string.

    \b
      echo '{"text": "Pipes are great.", "lang": "French"}' | lm-template 'Translate to {{ lang }}: {{ text }}' | lm-generate
      lm-template --system 'You answer in {{ lang }}.' '{{ text }}' < questions.jsonl
      lm-template --agent translator.toml < docs.jsonl | lm-generate
    """
    from lmpipe.cli.settings import template_run
    from lmpipe.tasks.template import run

    guarded("lm-template", lambda: run(template_run(options)))


if __name__ == "__main__":
    main()
