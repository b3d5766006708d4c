"""Settings from click options, built once at the edge.

Each tool's options (the dict click hands its command) become the library's settings
dataclasses here, which check themselves and raise UsageError; nothing below the CLI layer sees
the dict. Each builder imports its own tool's modules inside it: a tool loads only what it
runs, and its --help none of them (lmpipe.bin).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RecordError, UsageError

if TYPE_CHECKING:
    from ..backends.generate import GenerateSettings
    from ..backends.remote import ServerSettings
    from ..engine.constrain import Constraint
    from ..engine.decoding import Decoding
    from ..engine.sampling import Sampling
    from ..models.loading import ModelSettings
    from ..records.job import JobSettings
    from ..records.pipe import PipeSettings
    from ..serve.batch import BatchRun
    from ..serve.run import ServeRun
    from ..tasks.bench import BenchRun
    from ..tasks.chat_session import ChatRun
    from ..tasks.chunk import ChunkRun
    from ..tasks.detect import DetectRun
    from ..tasks.embed import EmbedRun
    from ..tasks.generate import GenerateRun
    from ..tasks.similar import SimilarRun
    from ..tasks.summarize import SummarizeRun
    from ..tasks.template import TemplateRun
    from ..tasks.tokenize import TokenizeRun
    from ..tasks.translate import TranslateRun

Options = dict[str, Any]


# The option bundles of lmpipe.cli.options, each to its settings.

def model_settings(o: Options) -> ModelSettings:
    """What model_options (and --quantize, where a tool has it) ask for."""
    from ..models.adapters import Adapter
    from ..models.loading import ModelSettings

    return ModelSettings(o["model"], o["device"], o["dtype"], o["attention"], o.get("quantize"),
                         adapters=tuple(Adapter.parse(a) for a in o.get("adapter") or ()), ctx_size=o.get("ctx_size"),
                         rope_scaling=o.get("rope_scaling"), rope_factor=o.get("rope_factor"), kernel=o.get("kernel"),
                         activations=o.get("activations") or "exact")


def decoding(o: Options) -> Decoding:
    """The Decoding the speed and draft options ask for (tools without draft options get none)."""
    from ..engine.decoding import Decoding

    return Decoding(o.get("cache") or "auto", bool(o.get("compile")), o.get("draft_model"),
                    o.get("draft_quantize"), o.get("draft_tokens") or 4)


def sampling_settings(o: Options) -> Sampling:
    """What sampling_options ask for."""
    from ..engine.sampling import Sampling, parse_logit_bias

    return Sampling(temperature=o["temperature"], top_p=o["top_p"], top_k=o["top_k"], min_p=o["min_p"],
                    repetition_penalty=o["repetition_penalty"], presence_penalty=o["presence_penalty"],
                    frequency_penalty=o["frequency_penalty"], max_new_tokens=o["max_new_tokens"],
                    seed=o["seed"], stop=tuple(o["stop"]), logit_bias=parse_logit_bias(o["logit_bias"]),
                    reasoning_budget=o.get("reasoning_budget"))


def read_chat_template(value: str | None) -> str | None:
    """--chat-template FILE|NAME: a file's text; else the name, left for the model's named
    templates (lmpipe.chat.prompts.with_template resolves it once the model is loaded)."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or exc
            raise UsageError(f"--chat-template {value}: cannot read it: {why}") from None
    from ..chat.prompts import is_template_name

    if not is_template_name(value):
        raise UsageError(f"--chat-template {value}: no such file (nor a template name)")
    return value


def template_settings(o: Options) -> dict[str, Any]:
    """What template_options ask of the prompt (PromptSettings' fields)."""
    return {"chat_template": read_chat_template(o.get("chat_template")), "think": o.get("think"),
            "reasoning_effort": o.get("reasoning_effort")}


def job_settings(o: Options) -> JobSettings:
    """--output FILE, --resume, --shard I/N (job_options)."""
    from ..records.job import JobSettings
    from ..records.shard import Shard

    return JobSettings(output=o.get("output"), resume=bool(o.get("resume")), shard=Shard.parse(o.get("shard")))


def pipe_settings(o: Options) -> PipeSettings:
    """--batch-size, --progress and the job options, where a tool has them."""
    from ..records.pipe import PipeSettings

    return PipeSettings(batch_size=o.get("batch_size"), progress=o.get("progress") or "auto", job=job_settings(o))


def constraint_from_options(json_schema: str | None = None, regex: str | None = None,
                            choice: Sequence[str] = ()) -> Constraint | None:
    """The constraint asked for on the command line, compiled and checked, or None."""
    from ..engine.constrain import choice_constraint, json_constraint, load_schema, regex_constraint

    options = (("--json-schema", json_schema), ("--regex", regex), ("--choice", choice))
    given = [name for name, value in options if value]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} cannot be combined; choose one")
    if json_schema:
        return json_constraint(load_schema(json_schema), source=json_schema)
    if regex:
        return regex_constraint(regex)
    if choice:
        return choice_constraint(choice)
    return None


# One function per tool: its options to what its task's run() takes.

def generate_settings(o: Options) -> GenerateSettings:
    from ..backends.generate import GenerateSettings
    from ..backends.vision_prompts import ImageSource
    from ..chat.prompts import PromptSettings
    from ..chat.tools import check_choice
    from ..vision.images import DEFAULT_MAX_PIXELS

    return GenerateSettings(
        prompt=PromptSettings(field=o["field"], system=o["system"], raw=o["raw"], prefix=o.get("prefix") or "",
                              **template_settings(o)),
        sampling=sampling_settings(o),
        out=o["out"],
        top_probs=o["top_probs"],
        ttnt=o["ttnt"],
        constraint=constraint_from_options(o.get("json_schema"), o.get("regex"), o.get("choice") or ()),
        tool_choice=check_choice(o.get("tool_choice") or "auto"),
        decoding=decoding(o),
        images=ImageSource(images=tuple(o.get("images") or ()), max_pixels=o.get("max_pixels") or DEFAULT_MAX_PIXELS),
    )


def server_settings(o: Options) -> ServerSettings | None:
    from ..backends.remote import ServerSettings

    if not o.get("server"):
        return None
    return ServerSettings(o["server"], kind=o.get("server_kind"), concurrency=o.get("concurrency") or 8,
                          retries=o["retries"] if o.get("retries") is not None else 3, api_key=client_key(o))


def client_key(o: Options) -> str | None:
    """The key a tool sends to --server: --api-key (LMPIPE_API_KEY), else OPENAI_API_KEY, as
    OpenAI's own clients read it; none without --server (a warm server gives its own token)."""
    if not o.get("server"):
        return None
    return o.get("api_key") or os.environ.get("OPENAI_API_KEY") or None


def generate_run(o: Options, given: frozenset[str] = frozenset()) -> GenerateRun:
    """`given`: the options typed on the command line (given_on_command_line), which a record's
    agent may not change."""
    from ..tasks.generate import GenerateRun

    return GenerateRun(settings=generate_settings(o), model=model_settings(o), pipe=pipe_settings(o),
                       prompt=o.get("prompt"), server=server_settings(o), no_server=bool(o.get("no_server")),
                       stream=o["stream"], quiet=o["quiet"],
                       display_pause=o["display_pause"], given=given)


def chat_run(o: Options) -> ChatRun:
    """lm-chat: lm-generate's model, sampling, speed and server options; the system prompt goes
    into the conversation (so /save keeps it), not into the prompt settings."""
    from ..backends.generate import GenerateSettings
    from ..chat.prompts import PromptSettings
    from ..tasks.chat_session import ChatRun

    settings = GenerateSettings(prompt=PromptSettings(**template_settings(o)), sampling=sampling_settings(o),
                                decoding=decoding(o))
    return ChatRun(settings=settings, model=model_settings(o), server=o.get("server"), api_key=client_key(o),
                   no_server=bool(o.get("no_server")), system=o.get("system") or "",
                   load=o.get("load"), quiet=o["quiet"])


def detect_run(o: Options) -> DetectRun:
    from ..tasks.detect import DetectRun, DetectSettings, parse_labels
    from ..vision.images import ImageSettings
    from ..vision.loading import VisionSettings

    try:
        labels = parse_labels(o["labels"]) if o.get("labels") else ()
    except RecordError as exc:
        raise UsageError(str(exc)) from None
    settings = DetectSettings(threshold=o["threshold"], top=o["top"], labels=labels, annotate=o["annotate"],
                              images=ImageSettings(field=o["field"], max_pixels=o["max_pixels"]))
    return DetectRun(settings, VisionSettings(o["model"], o["device"], o["dtype"]), pipe_settings(o))


def translate_run(o: Options) -> TranslateRun:
    from ..backends.seq2seq import Seq2SeqSettings
    from ..tasks.translate import TranslateRun, TranslateSettings

    settings = TranslateSettings(
        source=o["source"], target=o["target"], field=o["field"], out=o["out"],
        generation=Seq2SeqSettings(o["num_beams"], o["max_length"], None), window=o["window"],
    )
    return TranslateRun(settings, model_settings(o), pipe_settings(o))


def summarize_run(o: Options) -> SummarizeRun:
    from ..backends.seq2seq import Seq2SeqSettings
    from ..tasks.summarize import SummarizeRun, SummarizeSettings

    settings = SummarizeSettings(
        field=o["field"], out=o["out"], window=o["window"],
        generation=Seq2SeqSettings(o["num_beams"], o["max_length"], o["min_length"]),
    )
    return SummarizeRun(settings, model_settings(o), pipe_settings(o))


def parse_vars(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """--var NAME=VALUE, repeated."""
    out = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--var {pair!r}: use NAME=VALUE")
        out.append((name.strip(), value))
    return tuple(out)


def read_template(template: str | None, file: str | None) -> str | None:
    """TEMPLATE, or the text of --file."""
    if template is not None and file is not None:
        raise UsageError("give a TEMPLATE or --file, not both")
    if file is None:
        return template
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read template {file}: {exc.strerror or exc}") from None


def template_run(o: Options) -> TemplateRun:
    from ..tasks.template import TemplateRun, TemplateSettings

    settings = TemplateSettings(read_template(o["template"], o["file"]), o["system"], o["agent"], o["field"],
                                o["out"], parse_vars(o["var"]))
    return TemplateRun(settings, pipe_settings(o))


def tokenize_run(o: Options) -> TokenizeRun:
    from ..tasks.tokenize import TokenizeRun, TokenizeSettings

    settings = TokenizeSettings(field=o["field"], decode=o["decode"], special=not o["no_special"], out=o["out"])
    return TokenizeRun(settings, model=o["model"], tokenizer=o["tokenizer"], add_tokens=o["add_token"],
                       add_special_tokens=o["add_special_token"], save=o["save"], pipe=pipe_settings(o))


def chunk_run(o: Options) -> ChunkRun:
    from ..tasks.chunk import ChunkRun, ChunkSettings

    settings = ChunkSettings(o["max_tokens"], o["overlap"], o["field"], o["id_field"])
    return ChunkRun(settings, model=o["model"], tokenizer=o["tokenizer"], pipe=pipe_settings(o))


def bench_run(o: Options) -> BenchRun:
    from ..tasks.bench import BenchRun
    from ..tasks.bench_cases import BenchSettings

    settings = BenchSettings(
        model=model_settings(o),
        decoding=decoding(o),
        prompt_tokens=o["prompt_tokens"],
        gen_tokens=o["gen_tokens"],
        batches=tuple(o["batch"]) or (1, 4, 16),
        repetitions=o["repetitions"],
        baseline=o["baseline"],
        perplexity=o["perplexity"],
        threads=o["threads"],
    )
    return BenchRun(settings, skip_generate=o["skip_generate"], cold=o["cold"], loads=o["loads"], server=o["server"],
                    pipeline=o["pipeline"], concurrency=tuple(o["concurrency"]), synthetic=o["synthetic"])


# --model-option KEYs, and the option each replaces for one model (max-model-len: ctx-size as vLLM spells it).
MODEL_OPTION_KEYS = {"quantize": "quantize", "cache": "cache", "compile": "compile", "device": "device",
                     "dtype": "dtype", "attention": "attention", "keep-alive": "keep_alive", "max-batch": "max_batch",
                     "chat-template": "chat_template", "ctx-size": "ctx_size", "max-model-len": "ctx_size",
                     "rope-scaling": "rope_scaling", "rope-factor": "rope_factor"}


def model_option(o: Options, model: str, pair: str) -> Options:
    """`o` with one --model-option KEY=VALUE applied (a UsageError names what is wrong); a value
    is checked against the choices its command-line option has."""
    from ..engine.decoding import CACHES
    from ..models.device import ATTENTIONS, DEVICES, DTYPES
    from ..models.loading import ROPE_SCALINGS
    from ..models.quantize import MODES

    key, sep, value = pair.partition("=")
    if not sep or key not in MODEL_OPTION_KEYS:
        raise UsageError(f"--model-option {model} {pair}: expected KEY=VALUE with KEY one of "
                         f"{', '.join(MODEL_OPTION_KEYS)}")
    name = MODEL_OPTION_KEYS[key]
    kind: Any = {"quantize": MODES, "cache": CACHES, "device": DEVICES, "dtype": DTYPES, "attention": ATTENTIONS,
                 "compile": bool, "keep-alive": float, "max-batch": int, "chat-template": str, "ctx-size": int,
                 "max-model-len": int, "rope-scaling": ROPE_SCALINGS, "rope-factor": float}[key]
    if isinstance(kind, tuple):
        if value not in kind:
            raise UsageError(f"--model-option {model} {pair}: {key} must be one of {', '.join(kind)}")
        return {**o, name: value}
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UsageError(f"--model-option {model} {pair}: {key} must be true or false")
        return {**o, name: value.lower() in ("true", "1", "yes")}
    try:
        return {**o, name: kind(value)}
    except ValueError:
        raise UsageError(f"--model-option {model} {pair}: {key} must be a number") from None


def parse_loras(pairs: Sequence[str], models: Sequence[str]) -> list[tuple[str, str]]:
    """lm-serve's --lora NAME=PATH[:SCALE], repeated: names that are not a served model's."""
    out: list[tuple[str, str]] = []
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path:
            raise UsageError(f"--lora {pair!r}: use NAME=PATH[:SCALE]")
        if name in models or name in (n for n, _ in out):
            raise UsageError(f"--lora {name}: the name is taken")
        out.append((name, path))
    return out


def serve_run(o: Options) -> ServeRun:
    from ..engine.scheduler import SchedulerSettings
    from ..serve.guard import GuardSettings, is_loopback
    from ..serve.prompts import ImagePolicy
    from ..serve.roster import RosterSettings
    from ..serve.run import ServeRun

    def scheduler(options: Options) -> SchedulerSettings:
        return SchedulerSettings(model=model_settings(options), decoding=decoding(options),
                                 max_batch=options["max_batch"], max_queue=options["max_queue"],
                                 keep_alive=options["keep_alive"],
                                 chat_template=read_chat_template(options.get("chat_template")))

    models = tuple(dict.fromkeys(o["models"]))
    per_model: dict[str, Options] = {m: {**o, "model": m} for m in models}
    for model, pair in o["model_option"]:
        if model not in per_model:
            raise UsageError(f"--model-option {model}: not one of the -m models ({', '.join(models)})")
        per_model[model] = model_option(per_model[model], model, pair)
    on_request = None if o["listed_only"] else scheduler({**o, "model": None})
    served = [scheduler(per_model[m]) for m in models]
    loras = parse_loras(o.get("lora") or (), models)
    if loras:  # the first model's rows run them, each request's by its name (lmpipe.serve.roster.ServedAdapter)
        from ..models.adapters import Adapter

        first = served[0]
        served[0] = replace(first, model=replace(first.model, loras=tuple(
            (name, Adapter.parse(path)) for name, path in loras)))
    roster = RosterSettings(tuple(served), on_request, o["max_models"], allow_paths=o["allow_model_paths"])
    guard = GuardSettings(api_keys=api_keys(o["api_key"], o["api_key_file"]), loopback_only=is_loopback(o["host"]),
                          allowed_origins=tuple(o["allowed_origins"]), max_body=int(o["max_body"] * 1024 * 1024),
                          read_timeout_s=o["read_timeout"], max_requests=o["limit_concurrency"])
    return ServeRun(roster, host=o["host"], port=o["port"], preload=o["preload"], log=o["log"],
                    log_max_bytes=int(o["log_rotate"] * 1024 * 1024),
                    images=ImagePolicy(o["allow_local_images"], o["max_images_per_request"], o["max_pixels"]),
                    threads=o["threads"], guard=guard, max_n=o["max_n"])


def api_keys(given: tuple[str, ...], file: str | None) -> tuple[str, ...]:
    """--api-key's keys and --api-key-file's (one a line; blank lines and # comments skipped)."""
    keys = list(given)
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise UsageError(f"--api-key-file {file}: {exc.strerror or exc}") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise UsageError(f"--api-key-file {file} holds no key")
    return tuple(dict.fromkeys(keys))


def embed_run(o: Options) -> EmbedRun:
    from ..backends.embedding import EmbedSettings
    from ..models.loading import ModelSettings
    from ..tasks.embed import EmbedRun

    return EmbedRun(EmbedSettings(normalize=o["normalize"], chunk=o["chunk"]),
                    ModelSettings(o["model"], o["device"], o["dtype"]), pipe_settings(o),
                    field=o["field"], out=o["out"], encoding=o["encoding"])


def similar_run(o: Options) -> SimilarRun:
    from ..tasks.similar import SimilarRun

    return SimilarRun(text=o["query"], vector=o["vector"], record=o["record"], top=o["top"], field=o["field"],
                      model=o["model"])


def batch_run(o: Options) -> BatchRun:
    from ..engine.scheduler import SchedulerSettings
    from ..serve.batch import KEY, BatchRun

    scheduler = SchedulerSettings(model=model_settings(o), decoding=decoding(o), max_batch=o["max_batch"],
                                  chat_template=read_chat_template(o.get("chat_template")))
    pipe = pipe_settings(o)
    return BatchRun(scheduler, replace(pipe, job=replace(pipe.job, key=KEY)), server=o.get("server"),
                    no_server=bool(o.get("no_server")), api_key=client_key(o))
