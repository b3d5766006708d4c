"""Small test images, good and bad, written to a folder: each the way a real file of its kind is."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def noise(width: int, height: int, seed: int = 0):
    import numpy as np

    return (np.random.RandomState(seed).rand(height, width, 3) * 255).astype("uint8")


def save_rgb(path: Path, width: int, height: int, seed: int = 0, **save_args) -> Path:
    from PIL import Image

    Image.fromarray(noise(width, height, seed)).save(path, **save_args)
    return path


def save_exif_rotated(path: Path, width: int = 60, height: int = 40, seed: int = 3) -> Path:
    """Pixels stored sideways with EXIF Orientation 6: a viewer turns them 90° clockwise."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(noise(width, height, seed)).save(path, format="PNG", exif=exif)
    return path


def save_cmyk(path: Path, width: int = 40, height: int = 40, seed: int = 4) -> Path:
    from PIL import Image

    Image.fromarray(noise(width, height, seed)).convert("CMYK").save(path, format="JPEG", quality=95)
    return path


def sixteen_bit(width: int = 50, height: int = 30, seed: int = 5):
    import numpy as np

    return (np.random.RandomState(seed).rand(height, width) * 65535).astype("uint16")


def save_16bit(path: Path, width: int = 50, height: int = 30, seed: int = 5) -> Path:
    from PIL import Image

    Image.fromarray(sixteen_bit(width, height, seed)).save(path, format="PNG")
    return path


def save_palette(path: Path, width: int = 40, height: int = 30, seed: int = 6) -> Path:
    """A palette PNG whose index 0 is transparent."""
    from PIL import Image

    image = Image.fromarray(noise(width, height, seed)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    image.save(path, format="PNG", transparency=0)
    return path


def save_truncated(path: Path) -> Path:
    whole = path.with_suffix(".whole.png")
    save_rgb(whole, 60, 40, seed=7)
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def save_corrupt(path: Path) -> Path:
    """A PNG whose compressed pixel data has been overwritten."""
    whole = path.with_suffix(".whole.png")
    save_rgb(whole, 60, 40, seed=8)
    data = bytearray(whole.read_bytes())
    whole.unlink()
    start = data.index(b"IDAT") + 8
    data[start:start + 400] = bytes(range(200)) * 2
    path.write_bytes(bytes(data))
    return path


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def save_bomb(path: Path, side: int = 30000) -> Path:
    """A valid PNG header declaring side x side RGB pixels, in a few hundred bytes."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path
