"""Vision-language models: which configs are one, and their processors (images and text to model inputs)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def is_vision_language(config: Any, folder: Path) -> bool:
    """An image-text-to-text model saved with its processor (a config alone could be a text-only
    checkpoint of a family that has both, such as Gemma 3)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return False
    return any((folder / name).exists() for name in ("processor_config.json", "preprocessor_config.json"))


def takes_images(folder: Path) -> bool:
    """is_vision_language for a model folder, from its config.json alone (no transformers config
    object is built): what lm-serve tells clients before the model is loaded."""
    try:
        model_type = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return False
    return is_vision_language(SimpleNamespace(model_type=model_type), Path(folder))


def load_processor(folder: Path, config: Any) -> Any:
    """transformers' processor for the model; for images alone when its video processor cannot load.

    Qwen2-VL's and others' processors hold a video processor that needs torchvision, which lmpipe
    does not install: it sends no videos, so the processor is built from its image processor and
    tokenizer, and the class's own code still expands the image tokens.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(folder)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        return _images_only(folder, config)


def _images_only(folder: Path, config: Any) -> Any:
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    name = _processor_class(folder) or PROCESSOR_MAPPING_NAMES.get(config.model_type)
    cls: Any = getattr(transformers, name or "", None)  # a processor class, named at run time
    if cls is None:
        raise ImportError(f"the processor of a {config.model_type} model needs torchvision (pip install torchvision)")

    class ImagesOnlyProcessor(cls):  # the video processor is the one argument left out
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ImagesOnlyProcessor(image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer,
                               video_processor=None, chat_template=tokenizer.chat_template)


def _processor_class(folder: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = folder / name
        if path.exists():
            try:
                value = json.loads(path.read_text()).get("processor_class")
            except (OSError, ValueError):
                continue
            if isinstance(value, str):
                return value
    return None


def image_token_ids(processor: Any) -> set[int]:
    """The ids that stand for image features in a prompt (counted apart in the stats)."""
    tokenizer = processor.tokenizer
    ids: set[int] = set()
    for attr in ("image_token_id", "image_token_index"):
        if isinstance(value := getattr(processor, attr, None), int):
            ids.add(value)
    if isinstance(token := getattr(processor, "image_token", None), str):
        value = tokenizer.convert_tokens_to_ids(token)
        if isinstance(value, int) and value != tokenizer.unk_token_id:
            ids.add(value)
    return ids


def image_token_count(processor: Any, ids: Any) -> int | None:
    """How many of a prompt's ids stand for images (stats' image_tokens); None for a text model."""
    if processor is None:
        return None
    marks = image_token_ids(processor)
    return sum(1 for i in ids if i in marks)
