"""lm-chat: a conversation with a local language model at the terminal, or scripted in a pipe."""

from __future__ import annotations

import sys

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import (
    adapter_option,
    context_options,
    draft_options,
    model_options,
    sampling_options,
    server_option,
    speed_options,
    template_options,
)
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ = {
    "text": "In a pipe, a line that is a JSON object gives its message here; any other line is the message itself.",
}
FIELDS_WRITTEN = {
    "messages": "The conversation up to this turn's question (the system prompt first), as lm-generate reads it.",
    "generated": "The reply.",
    "reasoning": "The model's reasoning, when it wrote some apart from the reply.",
    "stats": "input_tokens, output_tokens, ttft_s, tokens_per_s, total_s, finish_reason.",
    "manifest": "model, kind, revision or sha256, settings, device, dtype and versions: what made the reply.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@model_options
@adapter_option
@sampling_options
@template_options
@speed_options
@context_options()
@draft_options
@server_option
@click.option("-s", "--system", default=None, help="System prompt to start with (/system changes it).")
@click.option("--load", default=None, metavar="FILE",
              help="Continue the conversation saved in FILE (lm-chat's /save, lm-dash's Ctrl-S).")
@click.option("-q", "--quiet", is_flag=True, help="At a terminal, no stats line after each reply.")
def main(**options):
    """Chat with a model: each reply remembers the conversation so far.

    At a terminal, replies stream (reasoning dim, apart) with a stats line after each; lines
    are edited with readline and remembered in lmpipe's home (chat_history). A message of
    several lines goes between lines of \"\"\". Ctrl-C stops a reply: the question stays in the
    conversation, the partial reply does not (as in Ollama). Ctrl-D or /bye leaves, with exit
    status 0. /help lists the commands: /system TEXT, /set NAME VALUE (temperature, top_p,
    top_k, repetition_penalty, seed, max_new_tokens, stop), /save FILE, /load FILE, /clear.

    Without a terminal, each line of stdin is a message (or a command), and each reply is
    written as the record lm-generate writes for the conversation so far: `messages`,
    `generated`, `stats`, `manifest`. /save writes one record {"messages": [...]} that
    lm-generate reads. With --seed, a script replays identically.

    \b
      lm-chat
      lm-chat -m Qwen/Qwen2.5-0.5B-Instruct --system "Answer in one sentence." -t 0.7
      printf 'Remember the word banana.\\nWhat word did I ask you to remember?\\n' | lm-chat --seed 1
      lm-chat --load chat.jsonl
    """
    from lmpipe.cli.settings import chat_run
    from lmpipe.tasks.chat_session import run

    guarded("lm-chat", lambda: run(chat_run(options), tty=sys.stdin.isatty() and stdout_is_tty()))


if __name__ == "__main__":
    main()
