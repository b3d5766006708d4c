"""Option bundles shared by several tools, as click decorators. Each option has an envvar."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import click
from click.core import ParameterSource

from ..backends.dialects import KINDS
from ..models.device import ATTENTIONS, DEVICES, DTYPES
from ..models.kernels.choice import ACTIVATIONS, KERNELS
from ..models.resolve import DEFAULT_MODEL
from ..records.progress import MODES

F = TypeVar("F", bound=Callable[..., Any])  # a click command, with the options added


def given_on_command_line() -> frozenset[str]:
    """The running command's options typed on its command line (not defaults, not environment
    variables): what a record may not change (lm-generate and a record's agent)."""
    ctx = click.get_current_context()
    return frozenset(name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE)


def _stack(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


MODEL_HELP = ("Alias (smollm2), local folder, .gguf file, or hub repo id (org/name[@revision]; "
              "org/name:Q4_K_M for its GGUF of that type).")


def model_options(f: F) -> F:
    """--model, --device, --dtype, --attention."""
    return _stack(
        click.option("-m", "--model", default=DEFAULT_MODEL, show_default=True, envvar="LMPIPE_MODEL", help=MODEL_HELP),
        device_options,
    )(f)


def served_models_options(f: F) -> F:
    """lm-serve's --model (repeatable), --model-option, --max-models, --listed-only, --allow-model-paths, then
    --device, --dtype, --attention."""
    return _stack(
        click.option("-m", "--model", "models", multiple=True, default=(DEFAULT_MODEL,), show_default=True,
                     envvar="LMPIPE_MODEL", metavar="MODEL",
                     help=MODEL_HELP + " Repeat to serve several; the first answers requests that name none."),
        click.option("--model-option", "model_option", nargs=2, multiple=True, metavar="MODEL KEY=VALUE",
                     help="A setting for one -m model only: quantize, cache, compile, device, dtype, attention, "
                          "keep-alive, max-batch, chat-template, ctx-size (or max-model-len), rope-scaling or "
                          "rope-factor (e.g. --model-option ./tiny quantize=int8)."),
        click.option("--max-models", type=click.IntRange(min=0), default=0, show_default=True,
                     envvar="LMPIPE_MAX_MODELS",
                     help="Models loaded at once (0: no bound); past it the least recently used idle one unloads."),
        click.option("--listed-only", is_flag=True,
                     help="Serve only the -m models: a request naming another gets a 404 (by default an alias or "
                          "a hub repo in the cache is loaded; nothing is downloaded). Embeddings too."),
        click.option("--allow-model-paths", is_flag=True,
                     help="A request may name a model folder or .gguf file on this machine (by default only "
                          "the -m models, aliases and hub repos in the cache: anything else is a 404)."),
        device_options,
    )(f)


def device_options(f: F) -> F:
    """--device, --dtype, --attention."""
    return _stack(
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, envvar="LMPIPE_DEVICE",
                     help="Where to run the model."),
        click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, envvar="LMPIPE_DTYPE",
                     help="Weight precision; auto is float32 on CPU, bfloat16 or float16 on GPUs."),
        click.option("--attention", type=click.Choice(ATTENTIONS), default=None, envvar="LMPIPE_ATTENTION",
                     help="Attention implementation (default: the model's own choice)."),
    )(f)


def field_options(default_out: str) -> Callable[[F], F]:
    """--field (read) and --out (write)."""
    return _stack(
        click.option("-f", "--field", default="text", show_default=True, help="Record field holding the input text."),
        click.option("-o", "--out", default=default_out, show_default=True,
                     help="Record field to write the result to."),
    )


def batch_option(f: F) -> F:
    return click.option("-b", "--batch-size", type=click.IntRange(min=1), default=None, envvar="LMPIPE_BATCH_SIZE",
                        help="Records per batch (default: 1 on a terminal, 8 in a pipe).")(f)


def sampling_options(f: F) -> F:
    """--temperature, --top-p, --top-k, --min-p, --repetition-penalty, --presence-penalty,
    --frequency-penalty, --logit-bias, --seed, --max-new-tokens, --stop."""
    return _stack(
        click.option("-t", "--temperature", type=float, default=0.0, show_default=True, help="0 is greedy."),
        click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass."),
        click.option("--top-k", type=int, default=0, show_default=True, help="Sample from the k likeliest (0: off)."),
        click.option("--min-p", type=float, default=0.0, show_default=True,
                     help="Sample only tokens at least this fraction as likely as the likeliest (0: off; "
                          "llama.cpp's default is 0.05)."),
        click.option("--repetition-penalty", type=float, default=1.0, show_default=True),
        click.option("--presence-penalty", type=float, default=0.0, show_default=True,
                     help="OpenAI's: subtracted from every token already generated (-2 to 2)."),
        click.option("--frequency-penalty", type=float, default=0.0, show_default=True,
                     help="OpenAI's: subtracted per time a token was generated (-2 to 2)."),
        click.option("--logit-bias", multiple=True, metavar="ID=BIAS",
                     help="OpenAI's logit_bias: add BIAS (-100 to 100) to token ID's logit; -100 bans it, "
                          "100 forces it (repeatable; greedy too)."),
        click.option("--seed", type=int, default=None, envvar="LMPIPE_SEED",
                     help="Random seed; recorded in the manifest (drawn at random when not given)."),
        click.option("-n", "--max-new-tokens", type=int, default=256, show_default=True),
        click.option("--stop", multiple=True, help="Stop at this string, cut from the output (repeatable)."),
    )(f)


def template_options(f: F) -> F:
    """--chat-template, --think/--no-think, --reasoning-effort, --reasoning-budget: how the chat
    template renders the prompt, and how long a reasoning model may think."""
    return _stack(
        click.option("--chat-template", default=None, metavar="FILE|NAME", envvar="LMPIPE_CHAT_TEMPLATE",
                     help="Render prompts with this Jinja chat template (a file) or the model's template of "
                          "this name (e.g. tool_use), in place of the model's default; its sha256 is in the manifest."),
        click.option("--think/--no-think", "think", default=None,
                     help="Turn a reasoning model's thinking on or off: the template's enable_thinking (Qwen3, "
                          "DeepSeek), reasoning_effort low for gpt-oss's --no-think  [default: the template's]"),
        click.option("--reasoning-effort", type=click.Choice(["low", "medium", "high"]), default=None,
                     help="The template's reasoning_effort (gpt-oss)."),
        click.option("--reasoning-budget", type=click.IntRange(min=0), default=None, metavar="N",
                     help="Close the think block after N thinking tokens, then let the model answer "
                          "(as llama.cpp's; 0: no thinking)."),
    )(f)


def adapter_option(f: F) -> F:
    """--adapter PATH[:SCALE], repeatable: LoRA adapters (lmpipe.models.adapters)."""
    return click.option("--adapter", multiple=True, metavar="PATH[:SCALE]",
                        help="A LoRA adapter in PEFT's format (a folder with adapter_config.json and "
                             "adapter_model.safetensors), its update added beside the model's weights (float32, "
                             "quantized or not), times SCALE (default 1); repeatable. In the manifest with its "
                             "sha256.")(f)


def progress_option(f: F) -> F:
    return click.option("--progress", type=click.Choice(MODES), default="auto", show_default=True,
                        envvar="LMPIPE_PROGRESS",
                        help="Progress on stderr: a bar (auto: when stderr is a terminal and stdout is not), "
                             "JSON events, or none.")(f)


@overload
def job_options(f: F, *, key: str = "id") -> F: ...
@overload
def job_options(f: None = None, *, key: str = "id") -> Callable[[F], F]: ...
def job_options(f: F | None = None, *, key: str = "id") -> F | Callable[[F], F]:
    """--output FILE, --resume, --shard I/N: batch jobs that survive being killed and split across workers.
    `key`: the field --resume knows records by (`@job_options(key="custom_id")`)."""
    if f is None:
        return lambda g: job_options(g, key=key)
    return _stack(
        click.option("--output", default=None, metavar="FILE", envvar="LMPIPE_OUTPUT",
                     help="Append records to FILE (fsync'd one by one) instead of stdout; "
                          "an existing FILE is an error without --resume."),
        click.option("--resume", is_flag=True, envvar="LMPIPE_RESUME",
                     help=f"Continue --output FILE: skip the records it holds (by `{key}`, else `input_sha256`)."),
        click.option("--shard", default=None, metavar="I/N", envvar="LMPIPE_SHARD",
                     help="Take every N-th input line starting at line I (0-based), for N workers."),
    )(f)


def vision_model_options(envvar: str) -> Callable[[F], F]:
    """--model (no default: there is no embedded vision model), --device, --dtype."""
    return _stack(
        click.option("-m", "--model", default=None, envvar=envvar,
                     help="Local folder or hub repo id (org/name[@revision]); required: no vision model is embedded."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, envvar="LMPIPE_DEVICE",
                     help="Where to run the model."),
        click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True, envvar="LMPIPE_DTYPE",
                     help="Weight precision; auto is float32 on CPU, bfloat16 or float16 on GPUs."),
    )


def speed_options(f: F) -> F:
    """--quantize, --cache, --compile: the fast decode path (lmpipe.engine.generation.Decoding)."""
    return _stack(
        click.option("--quantize", type=click.Choice(["int8", "int4"]), default=None, envvar="LMPIPE_QUANTIZE",
                     help="Weight-only quantization of the linear layers (CPU): int8 per channel, within "
                          "~1e-4 of float32 per layer; int4 in groups of 32 (a Q4_0/Q4_1 GGUF's own blocks) "
                          "with an int8 output head."),
        click.option("--kernel", type=click.Choice(KERNELS), default=None, envvar="LMPIPE_KERNEL",
                     help="With --quantize: the kernel for every row count, instead of the fastest measured "
                          "on this CPU at the first load (lmpipe-amx: AMX tiles for each 16 rows, AVX-512 VNNI "
                          "for the rest; lmpipe-vnni: AVX-512 VNNI; lmpipe-avx2; float32 on the dequantized "
                          "weights)."),
        click.option("--activations", type=click.Choice(ACTIVATIONS), default="exact", show_default=True,
                     envvar="LMPIPE_ACTIVATIONS",
                     help="How lmpipe's quantized kernels take each layer's input: exact (two int8 parts, "
                          "within ~1e-5 of float32 per product) or int8 (one 8-bit part per 32 values, as "
                          "llama.cpp's blocks: prompts up to ~1.7x faster without AMX, ~5e-3 per product)."),
        click.option("--cache", type=click.Choice(["auto", "fast", "dynamic", "static"]), default="auto",
                     show_default=True, envvar="LMPIPE_CACHE",
                     help="fast: lmpipe's own forward, cache allocated once (the families the docs' Fast "
                          "decoding page lists); auto: fast where it can run, else dynamic (said on stderr); "
                          "dynamic or static: transformers' forward with a growing or preallocated cache."),
        click.option("--compile", is_flag=True, envvar="LMPIPE_COMPILE",
                     help="torch.compile the per-token step (fast or static cache; the first batch of each shape "
                          "compiles, about a minute on a CPU)."),
    )(f)


def context_options(*aliases: str) -> Callable[[F], F]:
    """--ctx-size (and `aliases`: lm-serve's --max-model-len, as vLLM spells it), --rope-scaling,
    --rope-factor: the context a sequence may hold (lmpipe.models.loading.ModelSettings)."""
    return _stack(
        click.option("--ctx-size", *aliases, "ctx_size", type=click.IntRange(min=2), default=None,
                     envvar="LMPIPE_CTX_SIZE", metavar="N",
                     help="Tokens a sequence may hold, prompt and answer (default: the model's trained context). "
                          "A longer prompt is an error; the answer stops at the context (finish_reason length). "
                          "Past the trained context only with --rope-scaling."),
        click.option("--rope-scaling", type=click.Choice(["linear", "yarn", "dynamic"]), default=None,
                     envvar="LMPIPE_ROPE_SCALING",
                     help="Override the model's rope scaling (with --rope-factor), to stretch its context."),
        click.option("--rope-factor", type=float, default=None, envvar="LMPIPE_ROPE_FACTOR", metavar="F",
                     help="How many times the trained context --rope-scaling stretches the positions."),
    )


def draft_options(f: F) -> F:
    """--draft-model, --draft-quantize, --draft-tokens: speculative decoding (lmpipe.engine.speculative)."""
    return _stack(
        click.option("--draft-model", default=None, envvar="LMPIPE_DRAFT_MODEL", metavar="MODEL",
                     help="Speculative decoding: a smaller model with the same tokenizer (or this one with "
                          "--draft-quantize) proposes tokens the model checks in one pass. Greedy only."),
        click.option("--draft-quantize", type=click.Choice(["int8", "int4"]), default=None,
                     envvar="LMPIPE_DRAFT_QUANTIZE", help="Quantize the draft model."),
        click.option("--draft-tokens", type=int, default=4, show_default=True, envvar="LMPIPE_DRAFT_TOKENS",
                     help="Tokens the draft proposes per pass of the model."),
    )(f)


def server_option(f: F) -> F:
    """--server URL, --no-server and --api-key: without --server or --no-server, a running lm-serve
    that holds the same model with the same settings (recorded in lmpipe's home) answers instead
    of loading the model here."""
    return _stack(
        click.option("--server", default=None, envvar="LMPIPE_SERVER", metavar="URL",
                     help="Use a running lm-serve (or any OpenAI-compatible server) at URL. Without it, an "
                          "lm-serve running here with the same model and settings is used when there is one."),
        click.option("--no-server", is_flag=True, envvar="LMPIPE_NO_SERVER",
                     help="Load the model here, even when an lm-serve running here holds it."),
        click.option("--api-key", default=None, envvar="LMPIPE_API_KEY", metavar="KEY",
                     help="The key --server wants (lm-serve --api-key), sent as a Bearer token; default: "
                          "OPENAI_API_KEY for --server. A server found running here needs none."),
    )(f)


def remote_options(f: F) -> F:
    """How to talk to a server: --server-kind, --concurrency, --retries (lmpipe.backends.remote)."""
    return _stack(
        click.option("--server-kind", type=click.Choice(KINDS), default=None, envvar="LMPIPE_SERVER_KIND",
                     help="What the server is (lm-serve, vLLM, llama.cpp, Ollama, another), for the fields it reads "
                          "and how it counts  [default: asked of the server]"),
        click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True,
                     envvar="LMPIPE_CONCURRENCY",
                     help="Requests in flight at once to a server (output keeps input order)."),
        click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True, envvar="LMPIPE_RETRIES",
                     help="More tries for a request that got 429, 503 or a lost connection, with backoff."),
    )(f)
