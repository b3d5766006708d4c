"""lm-detect: find objects in images with a local detection or open-vocabulary detection model."""

from __future__ import annotations

import click

from lmpipe.cli.edge import guarded
from lmpipe.cli.options import batch_option, job_options, progress_option, vision_model_options
from lmpipe.records.pipe import stdout_is_tty
from lmpipe.vision.images import DEFAULT_MAX_PIXELS

FIELDS_READ = {
    "image": "path of the image file (a bare input line is taken as a path too)",
    "image_b64": "the image itself, base64 (optionally a data: URI), when there is no `image`",
    "labels": "what to look for, a list or a comma-separated string (overrides --labels for this record)",
}
FIELDS_WRITTEN = {
    "detections": "list of {label, score, box: {xmin, ymin, xmax, ymax}}, best first, box in pixels of the "
                  "image as a viewer shows it (EXIF orientation applied), clamped inside it",
    "width": "image width in pixels, as shown",
    "height": "image height in pixels, as shown",
    "annotated": "path of the copy with boxes drawn (with --annotate)",
    "stats": "{detections, load_s, inference_s, total_s, rows (model rows: one per label when open-vocabulary), "
             "batch (rows in its forward pass)}",
    "manifest": "{model, kind, revision, task, threshold, top, labels, device, dtype, versions}",
    "error": "why the record failed (missing, corrupt or oversized image...), with `line`",
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@vision_model_options("LMPIPE_DETECT_MODEL")
@click.option("-l", "--labels", default=None, help="Open-vocabulary models: what to look for, comma-separated. "
              "Closed-set models: keep only these labels.")
@click.option("-t", "--threshold", type=float, default=None,
              help="Minimum score (default: 0.5, or 0.1 for open-vocabulary models).")
@click.option("--top", type=click.IntRange(min=1), default=None, metavar="N",
              help="Keep the N best detections per image.")
@click.option("-f", "--field", default="image", show_default=True, help="Record field holding the image path.")
@click.option("--annotate", default=None, metavar="DIR", help="Write a PNG copy of each image with its boxes drawn.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels than this (decompression bombs).")
@batch_option
@progress_option
@job_options
def main(**options):
    """Detect objects in the image of every JSONL record on stdin (or every path line).

    Writes the record back with `detections`, `width`, `height`, `stats` and `manifest`.
    Works with any transformers object-detection model (DETR, YOLOS, RT-DETR, ...) and with
    open-vocabulary models (OWL-ViT, OWLv2, Grounding DINO) given --labels.

    \b
      ls photos/*.jpg | lm-detect -m facebook/detr-resnet-50 --top 5
      echo '{"image": "cat.jpg"}' | lm-detect -m google/owlvit-base-patch32 --labels "cat,remote control"
      ls *.png | lm-detect -m ./my-detr --threshold 0.7 --annotate boxes/
    """
    from lmpipe.cli.settings import detect_run
    from lmpipe.tasks.detect import run

    guarded("lm-detect", lambda: run(detect_run(options), tty=stdout_is_tty()))


if __name__ == "__main__":
    main()
