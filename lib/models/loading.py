"""Loading tokenizers and models for a resolved ModelRef, with device and precision settings."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ModelNotFound, UsageError
from . import gguf
from .device import check_attention, choose_device, choose_dtype
from .processors import is_vision_language, load_processor
from .resolve import ModelRef, resolve


# One model loads at a time in a process (lm-serve loads its generation and embedding models on
# request threads): transformers builds a model's layers on the meta device under a switch that two
# loads at once can see each other's side of ("Cannot copy out of meta tensor").
LOAD_LOCK = threading.RLock()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ModelSettings:
    """What --model, --device, --dtype and --attention ask for."""

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    attention: str | None = None
    quantize: str | None = None  # weight-only "int8" or "int4" (lmpipe.models.quantize)
    kernel: str | None = None  # --kernel: the quantized layers' kernel for every row count (lmpipe.models.kernels.choice)

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

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False))


def context_length(lm: LoadedModel) -> int | None:
    """How many tokens the model attends to, from its config; None when it does not say."""
    config = lm.model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(value := getattr(config, name, None), int):
            return value
    return None


def files_folder(ref: ModelRef, notify: Callable[[str], None] = _stderr) -> Path:
    """The folder holding loadable files for `ref`, converting a GGUF into the cache first."""
    if ref.kind in ("embedded", "gguf"):
        return gguf.ensure_converted(ref.path, notify)
    return ref.path


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
            folder = gguf.converted_folder(ref.path)
            if gguf.conversion_info(folder) is not None:
                return AutoTokenizer.from_pretrained(folder)
            return AutoTokenizer.from_pretrained(str(ref.path.parent), gguf_file=ref.path.name)
        return AutoTokenizer.from_pretrained(ref.path)
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"cannot load a tokenizer from {ref.name}: {_first_line(exc)}") from None


def load(settings: ModelSettings, notify: Callable[[str], None] = _stderr) -> LoadedModel:
    from .allocator import returning_freed_memory

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
    folder = files_folder(ref, notify)
    try:
        config = AutoConfig.from_pretrained(folder)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        kwargs: dict[str, Any] = {"dtype": dtype}
        if attention:
            kwargs["attn_implementation"] = attention
        model, processor = None, None
        if is_vision_language(config, folder):
            from transformers import AutoModelForImageTextToText

            auto, processor = AutoModelForImageTextToText, load_processor(folder, config)
        elif settings.quantize:
            from .quantize import check_mode
            from .quantized_loading import load_quantized

            check_mode(settings.quantize, device)
            if not attention:
                model = load_quantized(auto, folder, config, settings.quantize, dtype, notify)
        quantized = model is not None
        if model is None:
            model = auto.from_pretrained(folder, **kwargs)
        tokenizer = processor.tokenizer if processor is not None else AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"cannot load {ref.name}: {_first_line(exc)}") from None
    model.to(device).eval()
    torch.set_grad_enabled(False)
    ident = identity(ref, folder)
    if settings.quantize:
        if not quantized:
            from .quantize import quantize

            # A vision-language model's language model only (LLaVA's Llama, as lolama quantizes it).
            quantize(model, settings.quantize, device, under=language_parts(model) if processor is not None else ())
        ident["quantize"] = settings.quantize
        from .quantize import choose_kernels

        kernels = choose_kernels(model, settings.kernel, notify)
        if kernels:  # which kernel multiplies, per range of rows: the fastest measured here, or --kernel's
            ident["kernels"] = kernels
        if settings.quantize == "int4":  # the two kernels round differently: say which one computed
            from .quantize import int4_kernel_name

            ident["int4_kernel"] = int4_kernel_name(model)
    return LoadedModel(ref, model, tokenizer, device, str(dtype).removeprefix("torch."), ident, processor)


def language_parts(model: Any) -> tuple[str, ...]:
    """The names of a vision-language model's language model and output head."""
    decoder = model.get_decoder()
    names = tuple(name for name, module in model.named_modules() if module is decoder and name)
    return names[:1] + (("lm_head",) if getattr(model, "lm_head", None) is not None else ())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
