"""Images from records, decoded the way a viewer shows them, or a one-line RecordError.

A record names its image by a path in `image` (or the field given), by base64 in `image_b64`, or,
for a bare line such as `ls *.jpg | lm-detect` gives, by the line itself (`text`). Every image
comes out as an upright 8-bit RGB Pillow image: EXIF orientation applied, CMYK, 16-bit, palette,
grey and alpha modes converted, and a decompression-bomb guard on the pixel count.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RecordError, UsageError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own limit (a 0.25 GiB RGB image)
BACKGROUND = (255, 255, 255)  # what transparent pixels become, as most viewers show them on white


@dataclass(frozen=True)
class ImageSettings:
    field: str = "image"
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_pixels < 1:
            raise UsageError("--max-pixels must be at least 1")


@dataclass
class LoadedImage:
    image: Any  # PIL.Image.Image, mode RGB, upright
    source: str  # the path, or "image_b64"
    original_mode: str


def source_of(record: dict[str, Any], field: str = "image") -> tuple[str, bytes | Path]:
    """Where a record's image is: ("path", Path) or ("b64", bytes)."""
    value = record.get(field)
    if value is None and "image_b64" in record:
        return "b64", _b64(record["image_b64"])
    if value is None and "text" in record and set(record) == {"text"}:
        value = record["text"]  # a bare path line
    if value is None:
        raise RecordError(f"no image: give a path in `{field}`, base64 in `image_b64`, or a bare path line")
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"`{field}` must be a non-empty path string")
    return "path", Path(value.strip()).expanduser()


def _b64(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise RecordError("`image_b64` must be a non-empty base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(f"`image_b64` is not valid base64: {exc}") from None


def load_image(record: dict[str, Any], settings: ImageSettings = ImageSettings()) -> LoadedImage:
    kind, where = source_of(record, settings.field)
    if kind == "path":
        assert isinstance(where, Path)
        if not where.exists():
            raise RecordError(f"no such file: {where}")
        if where.is_dir():
            raise RecordError(f"{where} is a folder, not an image")
        image = decode(where, str(where), settings.max_pixels)
        return LoadedImage(image[0], str(where), image[1])
    assert isinstance(where, bytes)
    image = decode(io.BytesIO(where), "image_b64", settings.max_pixels)
    return LoadedImage(image[0], "image_b64", image[1])


def decode(source: Any, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Any, str]:
    """Open, check the size, decode fully, turn upright and convert to RGB: (image, original mode)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the guard below, with the limit this run asked for
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
            width, height = image.size
            if width * height > max_pixels:
                raise RecordError(
                    f"{name}: {width}x{height} is {width * height} pixels, over the limit of {max_pixels} "
                    "(a decompression bomb?); raise --max-pixels to allow it"
                )
            image.load()
            mode = image.mode
            image = ImageOps.exif_transpose(image)
            return to_rgb(image), mode
    except RecordError:
        raise
    except UnidentifiedImageError:
        raise RecordError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise RecordError(f"{name}: cannot decode the image: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def to_rgb(image: Any) -> Any:
    """8-bit RGB from any mode: 16-bit and float greys scaled, alpha composited on white."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = max(float(array.max()), 1.0)
        else:  # 16-bit samples (Pillow opens some 16-bit files as 32-bit "I"); 8-bit ones stay as they are
            top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(np.round(array * 255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA") if "transparency" in image.info else image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
