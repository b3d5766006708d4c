"""lmpipe.vision.images: where a record's image is, and decoding it the way a viewer shows it."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image
from tiny_images import (
    noise,
    save_16bit,
    save_bomb,
    save_cmyk,
    save_corrupt,
    save_exif_rotated,
    save_palette,
    save_rgb,
    save_truncated,
    sixteen_bit,
)

from lmpipe.errors import RecordError
from lmpipe.vision.images import ImageSettings, load_image, source_of


def pixels(loaded) -> np.ndarray:
    assert loaded.image.mode == "RGB"
    return np.asarray(loaded.image)


def test_path_field_bare_line_and_b64(tmp_path):
    path = save_rgb(tmp_path / "a.png", 12, 8)
    want = noise(12, 8)
    assert (pixels(load_image({"image": str(path)})) == want).all()
    assert (pixels(load_image({"text": str(path)})) == want).all()  # a bare path line
    assert (pixels(load_image({"photo": str(path)}, ImageSettings(field="photo"))) == want).all()
    b64 = base64.b64encode(path.read_bytes()).decode()
    loaded = load_image({"image_b64": b64})
    assert loaded.source == "image_b64" and (pixels(loaded) == want).all()
    assert (pixels(load_image({"image_b64": "data:image/png;base64," + b64})) == want).all()


def test_text_with_other_fields_is_not_a_path():
    with pytest.raises(RecordError, match="no image"):
        source_of({"text": "a caption", "id": 3})


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="no such file"):
        load_image({"image": str(tmp_path / "nope.jpg")})


def test_folder(tmp_path):
    with pytest.raises(RecordError, match="folder"):
        load_image({"image": str(tmp_path)})


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is text, not a JPEG\n")
    with pytest.raises(RecordError, match="not an image"):
        load_image({"image": str(tmp_path / "notes.jpg")})


def test_truncated(tmp_path):
    with pytest.raises(RecordError, match="truncated"):
        load_image({"image": str(save_truncated(tmp_path / "cut.png"))})


def test_corrupt(tmp_path):
    with pytest.raises(RecordError, match="cannot decode"):
        load_image({"image": str(save_corrupt(tmp_path / "bad.png"))})


def test_bad_base64():
    with pytest.raises(RecordError, match="not valid base64"):
        load_image({"image_b64": "not base64 !!"})


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = save_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 1000
    with pytest.raises(RecordError, match="30000x30000 is 900000000 pixels, over the limit"):
        load_image({"image": str(path)})


def test_max_pixels_is_the_limit(tmp_path):
    path = save_rgb(tmp_path / "a.png", 20, 10)
    assert load_image({"image": str(path)}, ImageSettings(max_pixels=200)).image.size == (20, 10)
    with pytest.raises(RecordError, match="over the limit of 199"):
        load_image({"image": str(path)}, ImageSettings(max_pixels=199))
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own guard is restored


def test_exif_rotation_applied(tmp_path):
    loaded = load_image({"image": str(save_exif_rotated(tmp_path / "r.png", 60, 40))})
    assert loaded.image.size == (40, 60)
    assert (pixels(loaded) == np.rot90(noise(60, 40, seed=3), k=-1)).all()  # turned 90° clockwise


def test_cmyk_converted(tmp_path):
    path = save_cmyk(tmp_path / "c.jpg")
    loaded = load_image({"image": str(path)})
    assert loaded.original_mode == "CMYK"
    assert (pixels(loaded) == np.asarray(Image.open(path).convert("RGB"))).all()


def test_16bit_scaled_to_8bit(tmp_path):
    loaded = load_image({"image": str(save_16bit(tmp_path / "g.png"))})
    assert loaded.original_mode.startswith("I")
    want = np.round(sixteen_bit().astype(np.float64) * 255 / 65535).astype(np.uint8)
    got = pixels(loaded)
    assert (got[..., 0] == want).all() and (got[..., 1] == want).all() and (got[..., 2] == want).all()


def test_palette_with_transparency_on_white(tmp_path):
    path = save_palette(tmp_path / "p.png")
    loaded = load_image({"image": str(path)})
    assert loaded.original_mode == "P"
    indices = np.asarray(Image.open(path))
    got = pixels(loaded)
    assert (indices == 0).any() and (got[indices == 0] == 255).all()  # transparent: white
    opaque = np.asarray(Image.open(path).convert("RGB"))[indices != 0]
    assert (got[indices != 0] == opaque).all()


def test_pillows_guard_comes_back_after_decodes_on_several_threads(tmp_path):
    # lm-serve reads a request's images in its thread pool: overlapping decodes must not leave
    # Pillow's global bomb guard off (each once saved the other's None and restored it).
    from concurrent.futures import ThreadPoolExecutor

    paths = [save_rgb(tmp_path / f"{i}.png", 64, 48) for i in range(8)]
    before = Image.MAX_IMAGE_PIXELS
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            list(pool.map(lambda p: load_image({"image": str(p)}), paths))
    assert Image.MAX_IMAGE_PIXELS == before is not None
