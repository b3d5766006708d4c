"""lm-detect: the same boxes, labels and scores as transformers' own pipelines, bad images as error records."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from conftest import jsonl, run_tool
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
from tiny_models import DETR_LABELS

LABELS = ["cat", "remote control"]


@pytest.fixture(scope="module")
def detr(tiny_detr):
    return tiny_detr


@pytest.fixture(scope="module")
def owlvit(tiny_owlvit):
    return tiny_owlvit


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Two images of one size (they share a forward pass), two of other sizes, one JPEG."""
    folder = tmp_path_factory.mktemp("photos")
    return [save_rgb(folder / "a.png", 60, 40, seed=0), save_rgb(folder / "b.png", 60, 40, seed=1),
            save_rgb(folder / "tall.png", 30, 50, seed=2), save_rgb(folder / "square.jpg", 45, 45, seed=9)]


def detect(*args: str, input: str | bytes = b"") -> tuple[list[dict], object]:
    from lmpipe.bin.detect import main

    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return jsonl(result.stdout_bytes), result


def lines(*records) -> str:
    return "".join((r if isinstance(r, str) else orjson.dumps(r).decode()) + "\n" for r in records)


def pipe(task: str, model):
    from transformers import pipeline

    return pipeline(task, model=str(model))


def canonical(detections: list[dict], width: int, height: int) -> list[tuple]:
    """Order-free form; boxes clamped into the image as lm-detect writes them."""
    def clamp(v, top):
        return min(max(v, 0), top)

    return sorted((d["label"], clamp(d["box"]["xmin"], width), clamp(d["box"]["ymin"], height),
                   clamp(d["box"]["xmax"], width), clamp(d["box"]["ymax"], height), d["score"])
                  for d in detections)


def assert_same(ours: dict, theirs: list[dict]) -> None:
    got, want = canonical(ours["detections"], ours["width"], ours["height"]), canonical(theirs, ours["width"],
                                                                                        ours["height"])
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g[:5] == w[:5]
        assert g[5] == pytest.approx(w[5], abs=1e-5)
    scores = [d["score"] for d in ours["detections"]]
    assert scores == sorted(scores, reverse=True)


# --- acceptance 1: equal to pipeline("object-detection") / pipeline("zero-shot-object-detection") ---

@pytest.mark.parametrize("batch", ["1", "4"])
def test_detr_matches_object_detection_pipeline(detr, photos, batch):
    records, result = detect("-m", str(detr), "--threshold", "0", "-b", batch,
                             input=lines(*({"image": str(p)} for p in photos)))
    assert result.exit_code == 0, result.output
    detector = pipe("object-detection", detr)
    assert len(records) == len(photos)
    for record, path in zip(records, photos, strict=True):
        image = Image.open(path)
        assert (record["width"], record["height"]) == image.size
        assert record["image"] == str(path)
        assert_same(record, detector(str(path), threshold=0.0))
        assert {d["label"] for d in record["detections"]} <= set(DETR_LABELS)
        assert record["manifest"]["task"] == "object-detection" and record["manifest"]["model"] == str(detr)
    # The two 60x40 images ran as one forward pass; the others alone, whatever their neighbours.
    assert [r["stats"]["batch"] for r in records] == ([2, 2, 1, 1] if batch == "4" else [1, 1, 1, 1])


def test_detr_matches_batched_pipeline(detr, photos):
    records, result = detect("-m", str(detr), "--threshold", "0", "-b", "2",
                             input=lines(str(photos[0]), str(photos[1])))
    assert result.exit_code == 0 and len(records) == 2, result.output
    batched = pipe("object-detection", detr)([str(photos[0]), str(photos[1])], threshold=0.0, batch_size=2)
    for record, theirs in zip(records, batched, strict=True):
        assert_same(record, theirs)


@pytest.mark.parametrize("batch", ["1", "8"])
def test_owlvit_matches_zero_shot_pipeline(owlvit, photos, batch):
    records, result = detect("-m", str(owlvit), "--labels", "cat, remote control", "--threshold", "0", "-b", batch,
                             input=lines(*(str(p) for p in photos), {"image": str(photos[2]), "labels": ["dog"]}))
    assert result.exit_code == 0, result.output
    assert len(records) == len(photos) + 1
    detector = pipe("zero-shot-object-detection", owlvit)
    for record, path in zip(records[:-1], photos, strict=True):
        assert_same(record, detector(str(path), candidate_labels=LABELS, threshold=0.0))
        assert {d["label"] for d in record["detections"]} == set(LABELS)
        assert record["stats"]["rows"] == 1  # OWL-ViT: one row scores both labels
    assert_same(records[4], detector(str(photos[2]), candidate_labels=["dog"], threshold=0.0))
    assert records[0]["manifest"]["labels"] == LABELS


def test_owlvit_matches_batched_pipeline(owlvit, photos):
    records, result = detect("-m", str(owlvit), "-l", "cat,remote control", "-t", "0.3", "-b", "4",
                             input=lines(str(photos[0]), str(photos[1])))
    assert result.exit_code == 0 and len(records) == 2, result.output
    batched = pipe("zero-shot-object-detection", owlvit)(
        [{"image": str(photos[0]), "candidate_labels": LABELS}, {"image": str(photos[1]), "candidate_labels": LABELS}],
        threshold=0.3, batch_size=4)
    for record, theirs in zip(records, batched, strict=True):
        assert_same(record, theirs)
        assert min(d["score"] for d in record["detections"]) > 0.3


def test_threshold_and_top(detr, photos):
    records, _ = detect("-m", str(detr), "--threshold", "0", input=lines(str(photos[0])))
    everything = records[0]["detections"]
    assert len(everything) == 12  # the model's 12 queries
    records, _ = detect("-m", str(detr), "--threshold", "0", "--top", "3", input=lines(str(photos[0])))
    assert records[0]["detections"] == everything[:3]
    middle = everything[5]["score"]
    records, _ = detect("-m", str(detr), "--threshold", str(middle), input=lines(str(photos[0])))
    assert records[0]["detections"] == [d for d in everything if d["score"] > middle]


def test_labels_filter_a_closed_set_model(detr, photos):
    records, _ = detect("-m", str(detr), "--threshold", "0", input=lines(str(photos[0])))
    wanted = records[0]["detections"][0]["label"]
    records, _ = detect("-m", str(detr), "--threshold", "0", "--labels", wanted, input=lines(str(photos[0])))
    assert records[0]["detections"] and {d["label"] for d in records[0]["detections"]} == {wanted}


# --- acceptance 2: original pixels, mixed sizes in one batch, EXIF orientation ---

def test_boxes_in_original_pixels_for_mixed_sizes(detr, tmp_path):
    paths = [save_rgb(tmp_path / f"{w}x{h}.png", w, h, seed=w) for w, h in ((64, 32), (20, 70), (90, 60), (33, 33))]
    records, _ = detect("-m", str(detr), "--threshold", "0", "-b", "4", input=lines(*map(str, paths)))
    detector = pipe("object-detection", detr)
    for record, path in zip(records, paths, strict=True):
        width, height = Image.open(path).size
        assert (record["width"], record["height"]) == (width, height)
        for d in record["detections"]:
            b = d["box"]
            assert 0 <= b["xmin"] <= b["xmax"] <= width and 0 <= b["ymin"] <= b["ymax"] <= height
        assert_same(record, detector(str(path), threshold=0.0))
    assert max(b["box"]["xmax"] for b in records[2]["detections"]) > 64  # scaled to 90x60, not the batch's size


def test_exif_rotated_image_as_a_viewer_shows_it(detr, tmp_path):
    path = save_exif_rotated(tmp_path / "sideways.png", 60, 40)
    records, _ = detect("-m", str(detr), "--threshold", "0", input=lines(str(path)))
    assert (records[0]["width"], records[0]["height"]) == (40, 60)
    upright = Image.fromarray(np.ascontiguousarray(np.rot90(noise(60, 40, seed=3), k=-1)))
    assert_same(records[0], pipe("object-detection", detr)(upright, threshold=0.0))


# --- acceptance 3: --annotate draws inside the boxes and nowhere else ---

def test_annotate_changes_exactly_the_box_outlines(detr, tmp_path):
    original = np.full((60, 90, 3), 128, dtype=np.uint8)
    Image.fromarray(original).save(tmp_path / "grey.png")
    out = tmp_path / "annotated"
    records, result = detect("-m", str(detr), "--threshold", "0", "--top", "3", "--annotate", str(out),
                             input=lines(str(tmp_path / "grey.png")))
    assert result.exit_code == 0
    record = records[0]
    assert record["annotated"] == str(out / "grey.png")
    drawn = np.asarray(Image.open(record["annotated"]).convert("RGB"))
    assert drawn.shape == original.shape
    changed = (drawn != original).any(axis=2)
    inside = np.zeros_like(changed)
    for d in record["detections"]:
        b = d["box"]
        assert b["xmax"] > b["xmin"] and b["ymax"] > b["ymin"]
        inside[b["ymin"]:b["ymax"], b["xmin"]:b["xmax"]] = True
        # the outline: every pixel of the box's edge is drawn
        assert changed[b["ymin"], b["xmin"]:b["xmax"]].all() and changed[b["ymax"] - 1, b["xmin"]:b["xmax"]].all()
        assert changed[b["ymin"]:b["ymax"], b["xmin"]].all() and changed[b["ymin"]:b["ymax"], b["xmax"] - 1].all()
    assert changed.any() and not (changed & ~inside).any()  # nothing outside the boxes


def test_annotate_names_never_collide(detr, tmp_path):
    (tmp_path / "x").mkdir()
    one, two = save_rgb(tmp_path / "p.png", 20, 20), save_rgb(tmp_path / "x" / "p.png", 20, 20, seed=4)
    b64 = base64.b64encode(one.read_bytes()).decode()
    records, _ = detect("-m", str(detr), "-t", "0", "--top", "1", "--annotate", str(tmp_path / "out"),
                        input=lines(str(one), str(two), {"image_b64": b64}))
    paths = [r["annotated"] for r in records]
    assert paths == [str(tmp_path / "out" / "p.png"), str(tmp_path / "out" / "p-2.png"),
                     str(tmp_path / "out" / "line-3.png")]
    assert all(Image.open(p).size == (20, 20) for p in paths)


# --- acceptance 4: bad images, one test each, all in one stream so order is checked too ---

@pytest.fixture(scope="module")
def bad_run(detr, photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "notes.jpg").write_text("not an image\n")
    cases = {
        "good": str(photos[0]),
        "missing": str(folder / "missing.jpg"),
        "corrupt": str(save_corrupt(folder / "corrupt.png")),
        "truncated": str(save_truncated(folder / "truncated.png")),
        "not_image": str(folder / "notes.jpg"),
        "bomb": str(save_bomb(folder / "bomb.png")),
        "cmyk": str(save_cmyk(folder / "cmyk.jpg")),
        "sixteen": str(save_16bit(folder / "sixteen.png")),
        "palette": str(save_palette(folder / "palette.png")),
        "exif": str(save_exif_rotated(folder / "exif.png")),
        "folder": str(folder),
        "thin": str(save_rgb(folder / "thin.png", 1, 400)),  # the tiny DETR's processor cannot resize it
        "last": str(photos[1]),
    }
    stream = lines(*({"image": path, "case": case} for case, path in cases.items()), "{not json",
                   {"image_b64": "%%%"})
    records, result = detect("-m", str(detr), "--threshold", "0", "-b", "4", input=stream)
    assert len(records) == 15, result.output
    return {r["case"] if "case" in r else f"line-{r['line']}": r for r in records}, records, result


def test_bad_images_keep_order_and_exit_1(bad_run):
    by_case, records, result = bad_run
    assert result.exit_code == 1
    assert [r.get("case") for r in records][:13] == list(by_case)[:13]
    assert [r.get("line") for r in records[-2:]] == [14, 15]
    stderr = result.stderr
    assert "Traceback" not in stderr and stderr.count("\n") == 1, stderr
    assert "9 of 15 records failed" in stderr
    assert "error" not in by_case["good"] and "error" not in by_case["last"]


def _error(bad_run, case: str) -> str:
    record = bad_run[0][case]
    assert "detections" not in record
    return record["error"]


def test_missing_file(bad_run):
    assert _error(bad_run, "missing").startswith("no such file: ")


def test_corrupt_file(bad_run):
    assert "cannot decode the image" in _error(bad_run, "corrupt")


def test_truncated_file(bad_run):
    assert "truncated" in _error(bad_run, "truncated")


def test_not_an_image(bad_run):
    assert "not an image" in _error(bad_run, "not_image")


def test_decompression_bomb(bad_run):
    assert "30000x30000 is 900000000 pixels" in _error(bad_run, "bomb")


def test_folder_instead_of_file(bad_run):
    assert "is a folder" in _error(bad_run, "folder")


def test_bad_json_and_bad_base64(bad_run):
    assert "invalid JSON" in bad_run[0]["line-14"]["error"]
    assert "not valid base64" in bad_run[0]["line-15"]["error"]


def test_image_the_model_cannot_take_fails_alone(bad_run):
    # lines 9-12 are one batch: palette, exif, folder, thin; the two images beside it still have detections
    assert "image processor cannot take this 1x400 image" in _error(bad_run, "thin")
    assert bad_run[0]["palette"]["detections"] and bad_run[0]["exif"]["detections"]


def _converted_matches(bad_run, detr, case: str, expected) -> None:
    record = bad_run[0][case]
    assert "error" not in record
    assert (record["width"], record["height"]) == expected.size
    assert_same(record, pipe("object-detection", detr)(expected, threshold=0.0))


def test_cmyk_converted(bad_run, detr):
    _converted_matches(bad_run, detr, "cmyk", Image.open(bad_run[0]["cmyk"]["image"]).convert("RGB"))


def test_16bit_converted(bad_run, detr):
    grey = np.round(sixteen_bit().astype(np.float64) * 255 / 65535).astype(np.uint8)
    _converted_matches(bad_run, detr, "sixteen", Image.fromarray(grey).convert("RGB"))


def test_palette_converted(bad_run, detr):
    image = Image.open(bad_run[0]["palette"]["image"]).convert("RGBA")
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    _converted_matches(bad_run, detr, "palette", Image.alpha_composite(white, image).convert("RGB"))


def test_exif_in_a_stream(bad_run, detr):
    upright = Image.fromarray(np.ascontiguousarray(np.rot90(noise(60, 40, seed=3), k=-1)))
    _converted_matches(bad_run, detr, "exif", upright)


# --- usage errors and the command line ---

def test_no_model_is_a_usage_error():
    result = run_tool("lm-detect", input=b"a.jpg\n")
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().strip() == (
        "lm-detect: error: lm-detect needs a detection model: pass --model FOLDER or --model org/name "
        "(e.g. facebook/detr-resnet-50, google/owlvit-base-patch32), or set LMPIPE_DETECT_MODEL")


def test_language_model_is_refused(tiny_llama):
    _, result = detect("-m", str(tiny_llama), input="a.jpg\n")
    assert result.exit_code == 2
    assert "is a llama model, not an object-detection model" in result.stderr


def test_open_vocabulary_needs_labels(owlvit, photos):
    records, result = detect("-m", str(owlvit), input=lines(str(photos[0]), {"image": str(photos[1]), "labels": "cat"}))
    assert result.exit_code == 1
    assert "give --labels" in records[0]["error"] and records[1]["detections"] is not None


def test_bad_threshold():
    _, result = detect("-m", "/nonexistent", "--threshold", "2")
    assert result.exit_code == 2 and "--threshold must be between 0 and 1" in result.stderr


def test_help_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, lmpipe.bin.detect; assert 'torch' not in sys.modules and 'PIL' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_terminal_table(capsys):
    from lmpipe.terminal.display import DetectTtySink

    DetectTtySink().finished({"image": "cat.jpg", "width": 64, "height": 48, "detections": [
        {"label": "cat", "score": 0.9132, "box": {"xmin": 3, "ymin": 4, "xmax": 50, "ymax": 40}}]}, False)
    out = capsys.readouterr().out
    assert "cat.jpg · 64×48 · 1 found" in out
    assert "cat" in out and "0.913" in out and " 50 " in out
