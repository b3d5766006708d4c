"""Loading vision models (object detection, open-vocabulary detection) for a resolved --model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelNotFound, UsageError, first_line
from ..models.device import choose_device, choose_dtype
from ..models.loading import files_folder, identity, to_stderr
from ..models.resolve import resolve

DETECTION = "object-detection"
ZERO_SHOT = "zero-shot-object-detection"
NO_MODEL = (
    "lm-detect needs a detection model: pass --model FOLDER or --model org/name "
    "(e.g. facebook/detr-resnet-50, google/owlvit-base-patch32), or set LMPIPE_DETECT_MODEL"
)


@dataclass(frozen=True)
class VisionSettings:
    """--model, --device, --dtype for a vision tool. There is no embedded vision model."""

    model: str | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if not (self.model or "").strip():
            raise UsageError(NO_MODEL)


@dataclass
class LoadedDetector:
    ref: Any  # ModelRef
    model: Any
    image_processor: Any
    tokenizer: Any  # only for open-vocabulary models
    task: str  # DETECTION or ZERO_SHOT
    device: str
    dtype: str
    identity: dict[str, Any] = field(default_factory=dict)

    @property
    def open_vocabulary(self) -> bool:
        return self.task == ZERO_SHOT


def detection_task(model_type: str) -> str | None:
    """Which detection task a config's model_type serves, or None."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES,
        MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES,
    )

    if model_type in MODEL_FOR_ZERO_SHOT_OBJECT_DETECTION_MAPPING_NAMES:
        return ZERO_SHOT
    if model_type in MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES:
        return DETECTION
    return None


def load_detector(settings: VisionSettings, notify: Callable[[str], None] = to_stderr) -> LoadedDetector:
    import torch
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForObjectDetection,
        AutoModelForZeroShotObjectDetection,
        AutoTokenizer,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ref = resolve(settings.model)
    if ref.kind in ("embedded", "gguf"):
        raise ModelNotFound(f"{ref.name} is a language model in GGUF form; {NO_MODEL}")
    device = choose_device(settings.device)
    dtype = choose_dtype(settings.dtype, device)
    folder = files_folder(ref, notify)
    try:
        config = AutoConfig.from_pretrained(folder)
        task = detection_task(config.model_type)
        if task is None:
            raise UsageError(f"{ref.name} is a {config.model_type} model, not an object-detection model")
        auto = AutoModelForZeroShotObjectDetection if task == ZERO_SHOT else AutoModelForObjectDetection
        model = auto.from_pretrained(folder, dtype=dtype)
        image_processor = AutoImageProcessor.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder) if task == ZERO_SHOT else None
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"cannot load {ref.name}: {first_line(exc)}") from None
    model.to(device).eval()
    torch.set_grad_enabled(False)
    return LoadedDetector(ref, model, image_processor, tokenizer, task, device,
                          str(dtype).removeprefix("torch."), identity(ref, folder))
