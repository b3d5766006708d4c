"""`--annotate DIR`: copies of the images with their boxes and labels drawn, as PNG (lossless).

Everything drawn stays inside its box: the outline runs along the box's inner edge and the label
tag sits in its top-left corner, cut to the box. Pixels outside every box keep their values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .detection import Detection

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def color_for(label: str, labels: list[str]) -> tuple[int, int, int]:
    return PALETTE[labels.index(label) % len(PALETTE)]


def line_width(width: int, height: int) -> int:
    return max(1, round(max(width, height) / 300))


def draw(image: Any, detections: Sequence[Detection]) -> Any:
    """A copy of `image` with every detection drawn, the best last so it stays on top."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = image.copy()
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    labels = sorted({d.label for d in detections})
    w = line_width(*canvas.size)
    for d in reversed(detections):
        b, color = d.box, color_for(d.label, labels)
        if b.xmax <= b.xmin or b.ymax <= b.ymin:
            continue
        right, bottom = min(b.xmax, canvas.width) - 1, min(b.ymax, canvas.height) - 1
        pen.rectangle([b.xmin, b.ymin, right, bottom], outline=color, width=w)
        text = f"{d.label} {d.score:.2f}"
        x0, y0, x1, y1 = pen.textbbox((0, 0), text, font=font)
        tag = Image.new("RGB", (round(x1 - x0) + 4, round(y1 - y0) + 4), color)
        ImageDraw.Draw(tag).text((2 - x0, 2 - y0), text, fill=(0, 0, 0) if sum(color) > 380 else (255, 255, 255),
                                 font=font)
        room_w, room_h = right - w - (b.xmin + w) + 1, bottom - w - (b.ymin + w) + 1
        if room_w > 0 and room_h > 0:
            canvas.paste(tag.crop((0, 0, min(tag.width, room_w), min(tag.height, room_h))), (b.xmin + w, b.ymin + w))
    return canvas


class Annotator:
    """Writes annotated copies into a folder, one name per input, never two records on one file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--annotate {folder}: {exc.strerror or exc}") from None
        self.used: set[str] = set()

    def path_for(self, source: str, line: int) -> Path:
        stem = Path(source).stem if source != "image_b64" else f"line-{line}"
        name = f"{stem}.png"
        if name in self.used:
            name = f"{stem}-{line}.png"
        self.used.add(name)
        return self.folder / name

    def write(self, image: Any, detections: Sequence[Detection], source: str, line: int) -> str:
        path = self.path_for(source, line)
        draw(image, detections).save(path, format="PNG")
        return str(path)
