"""THE detection step: images (and, for open-vocabulary models, their labels) to scored boxes.

It computes what transformers' own pipelines compute, batched:
- object detection (`pipeline("object-detection")`): each image is processed alone by the model's
  image processor, then images whose tensors have the same shape run as one forward pass, and the
  image processor's own `post_process_object_detection` scales boxes back to original pixels;
- open-vocabulary detection (`pipeline("zero-shot-object-detection")`): scores and boxes per label,
  each label tokenized alone; OWL-ViT and OWLv2 score all of an image's labels in one row (the
  labels padded together, then post-processed one query at a time), other models run one row
  per (image, label) pair as the pipeline does.
Grouping by shape, instead of padding images of different sizes together, keeps every image's
result the same whatever else is in its batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from ..errors import first_line
from .loading import LoadedDetector

MULTI_QUERY = ("owlvit", "owlv2")  # models that score many text queries against one image in one row


@dataclass(frozen=True)
class Box:
    xmin: int
    ymin: int
    xmax: int
    ymax: int


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: Box

    def record(self) -> dict[str, Any]:
        b = self.box
        return {"label": self.label, "score": self.score,
                "box": {"xmin": b.xmin, "ymin": b.ymin, "xmax": b.xmax, "ymax": b.ymax}}


@dataclass(frozen=True)
class DetectionRequest:
    image: Any  # an RGB Pillow image, upright
    labels: tuple[str, ...] = ()  # open-vocabulary models: what to look for


@dataclass
class DetectionResult:
    detections: list[Detection] = field(default_factory=list)
    inference_s: float = 0.0  # this image's share of the forward passes it took part in
    rows: int = 0  # model rows it ran as (one per label for open-vocabulary models)
    batch: int = 0  # rows in the largest forward pass it took part in
    error: str | None = None  # this image could not be processed; the others still were


FAILURES = (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError)  # from processors and models


def pixel_box(box: Any, width: int, height: int) -> Box:
    """Corners as the pipelines give them (truncated to int), clamped inside the image."""
    xmin, ymin, xmax, ymax = box.int().tolist()
    return Box(min(max(xmin, 0), width), min(max(ymin, 0), height),
               min(max(xmax, 0), width), min(max(ymax, 0), height))


def _image_features(detector: LoadedDetector, image: Any) -> dict[str, Any]:
    # As the pipelines do: one image at a time, floating tensors in the model's precision.
    features = detector.image_processor(images=[image], return_tensors="pt").to(detector.model.dtype)
    return {name: value.to(detector.device) for name, value in features.items()}


def _text_features(detector: LoadedDetector, labels: str | list[str]) -> dict[str, Any]:
    text = detector.tokenizer(labels, padding=True, return_tensors="pt")
    return {name: value.to(detector.device) for name, value in text.items()}


def _key(features: dict[str, Any]) -> tuple:
    return tuple(sorted((name, tuple(value.shape)) for name, value in features.items()))


def _grouped(rows: list[tuple[int, dict[str, Any]]], size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """Rows of identical tensor shapes, at most `size` at a time, in input order within a group."""
    groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault(_key(row[1]), []).append(row)
    for group in groups.values():
        for start in range(0, len(group), size):
            yield group[start:start + size]


def _forward(detector: LoadedDetector, group: list[tuple[int, dict[str, Any]]]) -> tuple[Any, float]:
    import torch

    batch = {name: torch.cat([features[name] for _, features in group]) for name in group[0][1]}
    started = time.perf_counter()
    outputs = detector.model(**batch)
    if detector.device == "cuda":
        torch.cuda.synchronize()
    return outputs, time.perf_counter() - started


def _post_process(detector: LoadedDetector, outputs: Any, sizes: list[tuple[int, int]], threshold: float,
                  query: int | None = None) -> list[dict[str, Any]]:
    """The image processor's own post-processing; `query` keeps only that text query's scores."""
    import torch

    if query is not None:
        outputs = SimpleNamespace(logits=outputs.logits[..., query:query + 1], pred_boxes=outputs.pred_boxes)
    target_sizes = torch.tensor(sizes, dtype=torch.int32, device=detector.device)
    return detector.image_processor.post_process_object_detection(outputs, threshold=threshold,
                                                                  target_sizes=target_sizes)


def multi_query(detector: LoadedDetector) -> bool:
    return detector.open_vocabulary and detector.model.config.model_type in MULTI_QUERY


def _rows(detector: LoadedDetector, requests: list[DetectionRequest], results: list[DetectionResult], per_image: bool):
    """Model rows and their owners: (request index, the labels the row asks about, or None)."""
    owners: list[tuple[int, tuple[str, ...] | None]] = []
    rows: list[tuple[int, dict[str, Any]]] = []
    for i, request in enumerate(requests):
        try:
            image_features = _image_features(detector, request.image)
        except FAILURES as exc:
            width, height = request.image.size
            results[i].error = (f"the model's image processor cannot take this {width}x{height} image: "
                                f"{first_line(exc)}")
            continue
        if not detector.open_vocabulary:
            queries: list[tuple[str, ...] | None] = [None]
        elif per_image:
            queries = [request.labels]
        else:
            queries = [(label,) for label in request.labels]
        for labels in queries:
            text = _text_features(detector, list(labels) if per_image else labels[0]) if labels else {}
            rows.append((len(owners), {**text, **image_features}))
            owners.append((i, labels))
    return rows, owners


def detect(detector: LoadedDetector, requests: list[DetectionRequest], threshold: float, batch_size: int = 8,
           query_batching: bool | None = None) -> list[DetectionResult]:
    """One DetectionResult per request, in order; detections above `threshold`, best first.

    `query_batching` (default: for OWL-ViT and OWLv2) scores all of an image's labels in one row, the
    way those models are built; otherwise each (image, label) pair is a row, as in the pipeline.
    """
    per_image = multi_query(detector) if query_batching is None else query_batching and detector.open_vocabulary
    results = [DetectionResult() for _ in requests]
    rows, owners = _rows(detector, requests, results, per_image)
    id2label = getattr(detector.model.config, "id2label", {}) or {}
    for group in _grouped(rows, max(1, batch_size)):
        sizes = [(requests[owners[n][0]].image.height, requests[owners[n][0]].image.width) for n, _ in group]
        try:
            outputs, seconds = _forward(detector, group)
            queries = len(owners[group[0][0]][1] or ()) if per_image else 0
            passes: list[tuple[int | None, list[dict[str, Any]]]] = [
                (q, _post_process(detector, outputs, sizes, threshold, q)) for q in range(queries)] or [
                (None, _post_process(detector, outputs, sizes, threshold))]
        except FAILURES as exc:  # out of memory, a model bug: every image of this forward pass says so
            for n, _ in group:
                results[owners[n][0]].error = f"detection failed: {first_line(exc)}"
            continue
        for row, ((n, _), (height, width)) in enumerate(zip(group, sizes, strict=True)):
            i, labels = owners[n]
            result = results[i]
            result.inference_s += seconds / len(group)
            result.rows += 1
            result.batch = max(result.batch, len(group))
            for q, found in passes:
                out = found[row]
                scores = out["scores"].tolist()
                if labels is None:  # a closed-set model: the label is the class the model chose
                    names = [id2label.get(index, str(index)) for index in out["labels"].tolist()]
                else:  # open vocabulary: the label this query (or this row) asked about
                    names = [labels[q if q is not None else 0]] * len(scores)
                for score, box, name in zip(scores, out["boxes"], names, strict=True):
                    if score <= 0.0:  # as the zero-shot pipeline: an exact zero is no detection
                        continue
                    result.detections.append(Detection(name, score, pixel_box(box, width, height)))
    for result in results:
        result.detections.sort(key=lambda d: d.score, reverse=True)
    return results
