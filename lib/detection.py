"""THE detection step: images (and, for open-vocabulary models, their labels) to scored boxes.

It computes what transformers' own pipelines compute, batched:
- object detection (`pipeline("object-detection")`): each image is processed alone by the model's
  image processor, then images whose tensors have the same shape run as one forward pass, and the
  image processor's own `post_process_object_detection` scales boxes back to original pixels;
- open-vocabulary detection (`pipeline("zero-shot-object-detection")`): one query per (image, label)
  pair, the label tokenized alone, pairs of the same shapes batched, scores and boxes per label.
Grouping by shape, instead of padding images of different sizes together, keeps every image's
result the same whatever else is in its batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from .vision import LoadedDetector


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
class Request:
    image: Any  # an RGB Pillow image, upright
    labels: tuple[str, ...] = ()  # open-vocabulary models: what to look for


@dataclass
class Result:
    detections: list[Detection] = field(default_factory=list)
    inference_s: float = 0.0  # this image's share of the forward passes it took part in
    rows: int = 0  # model rows it ran as (one per label for open-vocabulary models)
    batch: int = 0  # rows in the largest forward pass it took part in


def pixel_box(box: Any, width: int, height: int) -> Box:
    """Corners as the pipelines give them (truncated to int), clamped inside the image."""
    xmin, ymin, xmax, ymax = box.int().tolist()
    return Box(min(max(xmin, 0), width), min(max(ymin, 0), height),
               min(max(xmax, 0), width), min(max(ymax, 0), height))


def _image_features(detector: LoadedDetector, image: Any) -> dict[str, Any]:
    # As the pipelines do: one image at a time, floating tensors in the model's precision.
    features = detector.image_processor(images=[image], return_tensors="pt").to(detector.model.dtype)
    return {name: value.to(detector.device) for name, value in features.items()}


def _text_features(detector: LoadedDetector, label: str) -> dict[str, Any]:
    return {name: value.to(detector.device) for name, value in detector.tokenizer(label, return_tensors="pt").items()}


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


def _forward(detector: LoadedDetector, group: list[tuple[int, dict[str, Any]]], sizes: list[tuple[int, int]],
             threshold: float) -> tuple[list[dict[str, Any]], float]:
    import torch

    batch = {name: torch.cat([features[name] for _, features in group]) for name in group[0][1]}
    started = time.perf_counter()
    outputs = detector.model(**batch)
    if detector.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    target_sizes = torch.tensor(sizes, dtype=torch.int32, device=detector.device)
    found = detector.image_processor.post_process_object_detection(outputs, threshold=threshold,
                                                                   target_sizes=target_sizes)
    return found, seconds


def detect(detector: LoadedDetector, requests: list[Request], threshold: float, batch_size: int = 8) -> list[Result]:
    """One Result per request, in order; detections above `threshold`, best first."""
    results = [Result() for _ in requests]
    # rows: (index into `owners`, model inputs); owners: (request index, label or None)
    owners: list[tuple[int, str | None]] = []
    rows: list[tuple[int, dict[str, Any]]] = []
    for i, request in enumerate(requests):
        image_features = _image_features(detector, request.image)
        if detector.open_vocabulary:
            for label in request.labels:
                rows.append((len(owners), {**_text_features(detector, label), **image_features}))
                owners.append((i, label))
        else:
            rows.append((len(owners), image_features))
            owners.append((i, None))
    id2label = getattr(detector.model.config, "id2label", {}) or {}
    for group in _grouped(rows, max(1, batch_size)):
        sizes = [(requests[owners[n][0]].image.height, requests[owners[n][0]].image.width) for n, _ in group]
        found, seconds = _forward(detector, group, sizes, threshold)
        for (n, _), out, (height, width) in zip(group, found, sizes):
            i, label = owners[n]
            result = results[i]
            result.inference_s += seconds / len(group)
            result.rows += 1
            result.batch = max(result.batch, len(group))
            scores, boxes = out["scores"], out["boxes"]
            for j in range(len(scores)):
                score = float(scores[j])
                if score <= 0.0:  # as the zero-shot pipeline: an exact zero is no detection
                    continue
                name = label if label is not None else id2label.get(int(out["labels"][j]), str(int(out["labels"][j])))
                result.detections.append(Detection(name, score, pixel_box(boxes[j], width, height)))
    for result in results:
        result.detections.sort(key=lambda d: d.score, reverse=True)
    return results
