"""Loading tokenizers and models for a resolved ModelRef, with device and precision settings."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelNotFound, UsageError, first_line
from . import gguf, gguf_reader
from .adapters import Adapter, attach, merge, plain_lora
from .allocator import returning_freed_memory
from .device import check_attention, choose_device, choose_dtype
from .gguf_weights import load_gguf
from .kernels.choice import ACTIVATIONS, EXACT
from .processors import is_vision_language, load_processor
from .quantize import INT4_MODES, check_mode, choose_kernels, int4_kernel_name
from .resolve import ModelRef, resolve

# One model loads at a time in a process (lm-serve loads its generation and embedding models on
# request threads): transformers builds a model's layers on the meta device under a switch that two
# loads at once can see each other's side of ("Cannot copy out of meta tensor").
LOAD_LOCK = threading.RLock()


def to_stderr(message: str) -> None:
    """The default `notify`: a line for people, on stderr."""
    print(message, file=sys.stderr, flush=True)


ROPE_SCALINGS = ("linear", "yarn", "dynamic")  # llama.cpp's --rope-scaling words, transformers' rope types


@dataclass(frozen=True)
class ModelSettings:
    """What --model, --device, --dtype, --attention and the context options ask for."""

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attention: str | None = None
    quantize: str | None = None  # weight-only "int8" or "int4" (lmpipe.models.quantize)
    adapters: tuple[Adapter, ...] = ()  # LoRA adapters every row runs (lmpipe.models.adapters)
    loras: tuple[tuple[str, Adapter], ...] = ()  # LoRA adapters a row picks by name (lm-serve --lora NAME=PATH)
    ctx_size: int | None = None  # tokens a sequence holds, prompt and answer (None: the config's)
    rope_scaling: str | None = None  # overrides the config's rope scaling, with rope_factor
    rope_factor: float | None = None
    # A GGUF file dequantized to float32 by transformers, not run on its own tensors: lm-bench's reference.
    dequantize: bool = False
    # --kernel: the quantized layers' kernel for every row count (lmpipe.models.kernels.choice)
    kernel: str | None = None
    # --activations: how lmpipe's quantized kernels take a layer's input (kernels.choice.ACTIVATIONS)
    activations: str = EXACT

    def __post_init__(self) -> None:
        if self.ctx_size is not None and self.ctx_size < 2:
            raise UsageError("--ctx-size must be at least 2")
        if self.rope_scaling is not None and self.rope_scaling not in ROPE_SCALINGS:
            raise UsageError(f"--rope-scaling must be one of {', '.join(ROPE_SCALINGS)}")
        if (self.rope_scaling is None) != (self.rope_factor is None):
            raise UsageError("--rope-scaling and --rope-factor go together")
        if self.activations not in ACTIVATIONS:
            raise UsageError(f"--activations must be one of {', '.join(ACTIVATIONS)}")
        if self.rope_factor is not None and self.rope_factor <= 1:
            raise UsageError("--rope-factor must be more than 1 (it stretches the trained context)")

    def ref(self) -> ModelRef:
        return resolve(self.model)


@dataclass
class LoadedModel:
    ref: ModelRef
    model: Any
    tokenizer: Any
    device: str
    dtype: str
    identity: dict[str, Any] = field(default_factory=dict)  # id, revision or sha256, for manifests
    processor: Any = None  # a vision-language model's processor (lmpipe.models.processors); None for text models
    ctx_size: int | None = None  # --ctx-size, when asked: the context instead of the config's

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))


def context_length(lm: LoadedModel) -> int | None:
    """How many tokens a sequence may hold: --ctx-size, else the config's; None when neither says."""
    return lm.ctx_size or trained_context(lm.model.config)


def trained_context(config: Any) -> int | None:
    """The context the model was trained for, from its config; None when it does not say."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(value := getattr(config, name, None), int):
            return value
    return None


def set_context(config: Any, settings: ModelSettings, name: str) -> None:
    """Apply --rope-scaling/--rope-factor to `config` (before the model is built from it) and check
    --ctx-size against what the model can attend to: past the trained context only with scaling."""
    trained = trained_context(config)
    if settings.rope_scaling:
        params = getattr(config, "rope_parameters", None)
        if not isinstance(params, dict):
            raise UsageError(f"--rope-scaling: {name} has no rotary embedding to scale")
        # Gemma 3 keeps parameters per layer type: its global layers scale, its local ones keep their window.
        target = params["full_attention"] if isinstance(params.get("full_attention"), dict) else params
        target.update(rope_type=settings.rope_scaling, factor=settings.rope_factor,
                      original_max_position_embeddings=trained)
    if settings.ctx_size and trained and settings.ctx_size > trained and not settings.rope_scaling:
        raise UsageError(f"--ctx-size {settings.ctx_size} is past {name}'s trained context of {trained} tokens "
                         "(stretch it with --rope-scaling yarn --rope-factor F)")


def kernel_facts(model: Any, settings: ModelSettings, int4: bool, notify: Callable[[str], None]) -> dict[str, Any]:
    """Chooses the quantized layers' kernels (--kernel's, or the fastest measured here) and says,
    for the manifest, which one multiplies per range of rows and, where int4 layers run, which
    int4 kernel computed them (the kernels round differently)."""
    facts: dict[str, Any] = {}
    if kernels := choose_kernels(model, settings.kernel, notify, settings.activations):
        facts["kernels"] = kernels
        if settings.activations != EXACT:  # results differ from exact activations' by ~5e-3 a product
            facts["activations"] = settings.activations
    if int4:
        facts["int4_kernel"] = int4_kernel_name(model)
    return facts


def context_facts(settings: ModelSettings) -> dict[str, Any]:
    """The manifest's record of the context options that were given."""
    return {key: getattr(settings, key) for key in ("ctx_size", "rope_scaling", "rope_factor")
            if getattr(settings, key) is not None}


def files_folder(ref: ModelRef, notify: Callable[[str], None] = to_stderr) -> Path:
    """The folder holding loadable files for `ref`, converting a GGUF into the cache first
    (a GGUF file's float conversion, only for the loaders that cannot read its tensors: see _load)."""
    if ref.kind in ("embedded", "gguf"):
        return gguf.ensure_converted(ref.path, notify)
    return ref.path


def _gguf_model(ref: ModelRef, settings: ModelSettings, device: str, dtype: Any, attention: str | None,
                notify: Callable[[str], None]) -> tuple[Any, Path, dict[str, Any]] | None:
    """A GGUF file's model read from its own tensors (lmpipe.models.gguf_weights), its description's
    folder and what its manifest says of it; None where transformers' conversion must do."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    if merged_adapters(settings):  # a merged adapter changes float weights: transformers' conversion
        return None
    with gguf_reader.parsed_once():  # the description and the weights read one parse of the file
        folder = gguf.ensure_described(ref.path, notify)
        config = AutoConfig.from_pretrained(folder)
        if getattr(config, "is_encoder_decoder", False) or is_vision_language(config, folder):
            return None
        set_context(config, settings, ref.name)
        if settings.quantize:
            check_mode(settings.quantize, device)
        loaded = load_gguf(AutoModelForCausalLM, ref.path, config, dtype, settings.quantize, attention, notify)
    if loaded is None:
        return None
    model, ran, packing = loaded
    model.generation_config = GenerationConfig.from_pretrained(folder)
    return model, folder, {"gguf_tensors": ran, "packing": packing}


def identity(ref: ModelRef, folder: Path) -> dict[str, Any]:
    ident: dict[str, Any] = {"model": ref.id, "kind": ref.kind}
    if ref.revision:
        ident["revision"] = ref.revision
    if ref.kind in ("embedded", "gguf", "packaged"):
        info = gguf.conversion_info(folder) or {}
        ident["sha256"] = info.get("sha256")
    return ident


def load_tokenizer(ref: ModelRef):
    """Only the tokenizer, never the weights (a GGUF not yet converted is read directly)."""
    from transformers import AutoTokenizer

    try:
        if ref.kind in ("embedded", "gguf"):
            folder = gguf.finished_folder(ref.path)
            if folder is not None:
                return AutoTokenizer.from_pretrained(folder)
            return AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name)
        return AutoTokenizer.from_pretrained(ref.path)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot load a tokenizer from {ref.name}: {first_line(exc)}") from None


def load(settings: ModelSettings, notify: Callable[[str], None] = to_stderr) -> LoadedModel:
    with LOAD_LOCK, returning_freed_memory():
        return _load(settings, notify)


def _load(settings: ModelSettings, notify: Callable[[str], None]) -> LoadedModel:
    ref = settings.ref()  # first: an unknown model fails before torch is imported, and before stdin is read
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    device = choose_device(settings.device)
    dtype = choose_dtype(settings.dtype, device)
    attention = check_attention(settings.attention, device)
    try:
        # A GGUF file runs on its own tensors, quantized ones on lmpipe's kernels, as llama.cpp
        # runs it; transformers' float32 conversion only where that cannot be done.
        own_gguf = ref.kind == "gguf" and device == "cpu" and not settings.dequantize
        read = _gguf_model(ref, settings, device, dtype, attention, notify) if own_gguf else None
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"cannot load {ref.name}: {first_line(exc)}") from None
    if read is not None:
        model, folder, facts = read
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot load {ref.name}: {first_line(exc)}") from None
        torch.set_grad_enabled(False)
        ident = {**identity(ref, folder), **facts}
        if settings.quantize:
            ident["quantize"] = settings.quantize
        # The file's quantized tensors get their kernels as any quantized model's do.
        int4 = any(mode in kinds for kinds in facts["gguf_tensors"].values() for mode in INT4_MODES)
        ident.update(kernel_facts(model, settings, int4, notify), **context_facts(settings))
        ident.update(_adapters(model, settings))
        return LoadedModel(ref, model, tokenizer, device, str(dtype).removeprefix("torch."), ident,
                           ctx_size=settings.ctx_size)
    folder = files_folder(ref, notify)
    try:
        config = AutoConfig.from_pretrained(folder)
        set_context(config, settings, ref.name)
        auto: Any = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        kwargs: dict[str, Any] = {"dtype": dtype, "config": config}
        if attention:
            kwargs["attn_implementation"] = attention
        model, processor = None, None
        if is_vision_language(config, folder):
            from transformers import AutoModelForImageTextToText

            auto, processor = AutoModelForImageTextToText, load_processor(folder, config)
        elif settings.quantize:
            from .quantized_loading import load_quantized

            check_mode(settings.quantize, device)
            if not attention and not merged_adapters(settings):  # a merge changes float weights first
                model = load_quantized(auto, folder, config, settings.quantize, dtype, notify)
        quantized = model is not None
        if model is None:
            model = auto.from_pretrained(folder, **kwargs)
        tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"cannot load {ref.name}: {first_line(exc)}") from None
    if merged_adapters(settings):
        model = merge(model, settings.adapters)
    model.to(device).eval()
    torch.set_grad_enabled(False)
    ident = identity(ref, folder)
    if settings.quantize:
        if not quantized:
            from .quantized_layers import quantize

            # A vision-language model's language model only (LLaVA's Llama, as lolama quantizes it).
            quantize(model, settings.quantize, device, under=language_parts(model) if processor is not None else ())
        ident["quantize"] = settings.quantize
    # without quantized layers too: --kernel and --activations are then refused, never ignored
    ident.update(kernel_facts(model, settings, settings.quantize == "int4", notify))
    ident.update(context_facts(settings))
    ident.update(_adapters(model, settings))
    return LoadedModel(ref, model, tokenizer, device, str(dtype).removeprefix("torch."), ident, processor,
                       settings.ctx_size)


def merged_adapters(settings: ModelSettings) -> bool:
    """The generating tools' adapters are merged into the weights (peft's merge_and_unload) only
    where they are more than a low-rank update (lmpipe.models.adapters.plain_lora); else they run
    beside the base weights, after any quantization, in float32."""
    return any(plain_lora(a) is not None for a in settings.adapters)


def _adapters(model: Any, settings: ModelSettings) -> dict[str, Any]:
    """Stack the adapters beside the weights (lmpipe.models.adapters.attach), once the model is
    quantized; the manifest's record of them."""
    if not settings.adapters and not settings.loras:
        return {}
    merged = merged_adapters(settings)
    for name, adapter in settings.loras:
        if (why := plain_lora(adapter)) is not None:
            raise UsageError(f"--lora {name}: lmpipe serves plain LoRA adapters beside the base weights ({why})")
    if settings.loras or not merged:
        attach(model, () if merged else settings.adapters, settings.loras)
    facts: dict[str, Any] = {}
    if settings.adapters:
        facts["adapters"] = [a.identity() for a in settings.adapters]
    return facts


def language_parts(model: Any) -> tuple[str, ...]:
    """The names of a vision-language model's language model and output head."""
    decoder = model.get_decoder()
    names = tuple(name for name, module in model.named_modules() if module is decoder and name)
    return names[:1] + (("lm_head",) if getattr(model, "lm_head", None) is not None else ())
