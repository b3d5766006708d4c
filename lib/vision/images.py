"""Images from records, decoded the way a viewer shows them, or a one-line RecordError.

The one image reader of lmpipe: lm-detect's images and the images of a vision-language prompt
(lm-generate, lm-serve, the dashboard's chat) come through it. An image is named by a path, a
`file://` URL, a `data:` URL, or base64 (`image_b64`). For lm-detect a record names its image by a
path in `image` (or the field given), by base64 in `image_b64`, or, for a bare line such as
`ls *.jpg | lm-detect` gives, by the line itself (`text`); a prompt's images are in `image`,
`images` or `image_b64` (`record_images`). Every image comes out as an upright 8-bit RGB Pillow
image: EXIF orientation applied, CMYK, 16-bit, palette, grey and alpha modes converted, and a
decompression-bomb guard on the pixel count. A remote URL is refused: lmpipe fetches nothing.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
import warnings
from contextlib import contextmanager
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


def _b64(value: Any, name: str = "`image_b64`") -> bytes:
    if not isinstance(value, str) or not value:
        raise RecordError(f"{name} must be a non-empty base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError(f"{name} is not valid base64: {exc}") from None


def load_image(record: dict[str, Any], settings: ImageSettings = ImageSettings()) -> LoadedImage:
    """lm-detect's image: one per record."""
    kind, where = source_of(record, settings.field)
    if kind == "path":
        assert isinstance(where, Path)
        return open_path(where, settings.max_pixels)
    assert isinstance(where, bytes)
    return open_bytes(where, "image_b64", settings.max_pixels)


def data_url(loaded: LoadedImage) -> str:
    """The image as it was read (upright RGB) in a PNG `data:` URL: what a server is sent, so it
    decodes the very pixels in-process generation would use (PNG is lossless)."""
    buffer = io.BytesIO()
    loaded.image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


REMOTE = "a remote image URL ({url}): send the image inline as a data: URL; lmpipe fetches nothing"
LOCAL_REFUSED = "a local image path ({path}) is refused here: send the image inline as a data: URL"


def ref_kind(ref: str) -> str:
    """What an image reference names: "data" (a data: URL), "remote" (a URL lmpipe never fetches)
    or "path" (a file here: a plain path or a file:// URL)."""
    scheme = ref.partition(":")[0].lower()
    return "data" if scheme == "data" else "remote" if scheme in ("http", "https", "ftp") else "path"


def read_image(ref: Any, max_pixels: int = DEFAULT_MAX_PIXELS, allow_paths: bool = True,
               name: str = "image") -> LoadedImage:
    """One image named by a string: a path, a `file://` URL, a `data:` URL (base64). A remote URL
    is refused, and so is a path when `allow_paths` is False (lm-serve without --allow-local-images)."""
    if not isinstance(ref, str) or not ref.strip():
        raise RecordError(f"`{name}` must be a non-empty string: a path or a data: URL")
    ref = ref.strip()
    kind = ref_kind(ref)
    if kind == "data":
        head, comma, _ = ref.partition(",")
        if not comma or not head.endswith(";base64"):
            raise RecordError("a data: URL image must be base64 (data:image/png;base64,...)")
        return open_bytes(_b64(ref, "data: URL"), "data: URL", max_pixels)
    if kind == "remote":
        raise RecordError(REMOTE.format(url=ref if len(ref) < 80 else ref[:77] + "..."))
    if ref.partition(":")[0].lower() == "file":
        from urllib.parse import unquote, urlparse

        ref = unquote(urlparse(ref).path)
    if not allow_paths:
        raise RecordError(LOCAL_REFUSED.format(path=ref))
    return open_path(Path(ref).expanduser(), max_pixels)


def record_images(record: dict[str, Any], field: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS,
                  allow_paths: bool = True) -> list[LoadedImage]:
    """A prompt's images named by a record: `field` (a path or data: URL, or a list of them),
    `images` (a list), `image_b64` (base64, or a list of it), in that order."""
    images: list[LoadedImage] = []
    for key in dict.fromkeys((field, "images")):
        value = record.get(key)
        for ref in ([value] if isinstance(value, str) else value if isinstance(value, list) else []):
            images.append(read_image(ref, max_pixels, allow_paths, key))
        if value is not None and not isinstance(value, (str, list)):
            raise RecordError(f"`{key}` must be a path, a data: URL, or a list of them")
    b64 = record.get("image_b64")
    for value in ([b64] if isinstance(b64, str) else b64 if isinstance(b64, list) else []):
        images.append(open_bytes(_b64(value), "image_b64", max_pixels))
    if b64 is not None and not isinstance(b64, (str, list)):
        raise RecordError("`image_b64` must be a base64 string or a list of them")
    return images


def open_path(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    if not path.exists():
        raise RecordError(f"no such file: {path}")
    if path.is_dir():
        raise RecordError(f"{path} is a folder, not an image")
    image, mode = decode(path, str(path), max_pixels)
    return LoadedImage(image, str(path), mode)


def open_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    image, mode = decode(io.BytesIO(data), name, max_pixels)
    return LoadedImage(image, name, mode)


_decoding = 0  # decodes under way, in any thread: Pillow's own guard is off while there are any
_decoding_lock = threading.Lock()
_pillow_limit: Any = None  # Pillow's MAX_IMAGE_PIXELS, kept while its guard is off


@contextmanager
def _own_pixel_limit():
    """Pillow's global bomb guard off while decodes run (each checks its own --max-pixels), and
    back on when the last one ends. Each decode saving and restoring the global itself lost it
    when two overlapped (lm-serve reads images on several threads): the second saved None."""
    from PIL import Image

    global _decoding, _pillow_limit
    with _decoding_lock:
        if _decoding == 0:
            _pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _decoding += 1
    try:
        yield
    finally:
        with _decoding_lock:
            _decoding -= 1
            if _decoding == 0:
                Image.MAX_IMAGE_PIXELS = _pillow_limit


def decode(source: Any, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Any, str]:
    """Open, check the size, decode fully, turn upright and convert to RGB: (image, original mode)."""
    with _own_pixel_limit():
        return _decoded(source, name, max_pixels)


def _decoded(source: Any, name: str, max_pixels: int) -> tuple[Any, str]:
    from PIL import Image, ImageOps, UnidentifiedImageError

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
            return to_rgb(ImageOps.exif_transpose(image)), mode
    except RecordError:
        raise
    except UnidentifiedImageError:
        raise RecordError(f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise RecordError(f"{name}: cannot decode the image: {exc}") from None


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
