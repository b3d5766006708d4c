"""lm-model-info: what a model is: architecture, size, layers, heads, vocabulary, tokens."""

from __future__ import annotations

import sys

import click

from lmpipe.cli.edge import guarded
from lmpipe.models.device import DEVICES, DTYPES
from lmpipe.records.pipe import stdout_is_tty

FIELDS_READ = {"model": "The model, when no argument names one; also an lm-cache-ls record's `id` (or `path`)."}
FIELDS_WRITTEN = {
    "id": "Hub repo id, or the file or folder path.",
    "kind": "embedded, gguf, folder or hub.",
    "path": "Where the model's files are.",
    "architecture": "The transformers class, e.g. LlamaForCausalLM.",
    "model_type": "The config's model type, e.g. llama.",
    "parameters": "Parameter count (tied weights once).",
    "parameters_from": "`safetensors` (headers, no weights read) or `loaded` (--load).",
    "vocab_size": "Vocabulary size from the config.",
    "layers": "Hidden layers.",
    "heads": "Attention heads.",
    "kv_heads": "Key/value heads (fewer than heads: grouped-query attention).",
    "hidden_size": "Hidden size.",
    "intermediate_size": "MLP size.",
    "context_length": "Maximum positions.",
    "dtype": "The config's dtype, or the loaded one with --load.",
    "tie_word_embeddings": "Whether input and output embeddings are shared.",
    "encoder_decoder": "True for seq2seq models.",
    "special_tokens": "bos, eos, unk, pad, ... as the tokenizer defines them.",
    "chat_template": "Whether the tokenizer has a chat template.",
    "size_bytes": "Size on disk of the model's files (a GGUF file for gguf and embedded).",
    "converted_path": "gguf and embedded: lmpipe's converted folder, once converted.",
    "converted_size_bytes": "Its size on disk.",
    "revision": "hub: the commit hash.",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("models", nargs=-1, metavar="[MODEL]...")
@click.option("--load", is_flag=True, help="Load the weights for exact figures (slower).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, envvar="LMPIPE_DEVICE",
              help="With --load: where to load the model.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, envvar="LMPIPE_DTYPE",
              help="With --load: weight precision.")
@click.option("--json", "json_out", is_flag=True, help="Write JSONL even on a terminal.")
def main(**options):
    """Describe each MODEL (alias, folder, .gguf file or hub repo id; default: the embedded model).

    From its config and tokenizer alone, fast; --load counts the parameters on the loaded model.
    With no MODEL and records on stdin, describes the model each record names.

    \b
      lm-model-info
      lm-model-info HuggingFaceTB/SmolLM2-135M-Instruct --load
      lm-cache-ls | lm-model-info | jq '{id, parameters, context_length}'
    """
    from lmpipe.tasks.model_info import run

    guarded("lm-model-info", lambda: run(tty=stdout_is_tty(), stdin_tty=sys.stdin.isatty(), **options))


if __name__ == "__main__":
    main()
