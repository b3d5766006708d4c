"""lm-detect's task: records naming images in, records with detections, size, stats, manifest out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecordError, UsageError
from ..records.jsonl import Item, error_record
from ..records.manifest import manifest
from ..records.pipe import JsonlSink, PipeSettings, batch_size_for, run_records
from ..records.runner import Finished
from ..terminal.display import DetectTtySink
from ..vision.annotate import Annotator
from ..vision.detection import Detection, DetectionRequest, DetectionResult, detect
from ..vision.images import ImageSettings, LoadedImage, load_image
from ..vision.loading import LoadedDetector, VisionSettings, load_detector

DEFAULT_THRESHOLD = {False: 0.5, True: 0.1}  # the pipelines' defaults: closed set, open vocabulary


def parse_labels(value: Any, where: str = "--labels") -> tuple[str, ...]:
    """`"cat, remote control"` or `["cat", "remote control"]` to a tuple of labels."""
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise RecordError(f"{where} must be a comma-separated string or a list of strings")
    labels = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not labels:
        raise RecordError(f"{where} names no label")
    return labels


@dataclass(frozen=True)
class DetectSettings:
    threshold: float | None = None  # None: the pipeline default for the model's task
    top: int | None = None
    labels: tuple[str, ...] = ()
    annotate: str | None = None
    images: ImageSettings = field(default_factory=ImageSettings)

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise UsageError("--threshold must be between 0 and 1")
        if self.top is not None and self.top < 1:
            raise UsageError("--top must be at least 1")


@dataclass
class PreparedImage:
    item: Item
    image: LoadedImage
    labels: tuple[str, ...]
    load_s: float


class DetectTask:
    def __init__(self, detector: LoadedDetector, settings: DetectSettings, batch_size: int = 8):
        self.detector, self.settings, self.batch_size = detector, settings, batch_size
        self.threshold = settings.threshold if settings.threshold is not None else DEFAULT_THRESHOLD[
            detector.open_vocabulary]
        self.annotator = Annotator(settings.annotate) if settings.annotate else None
        self.manifest = manifest(
            detector.identity,
            {"task": detector.task, "threshold": self.threshold, "top": settings.top,
             "labels": list(settings.labels) or None},
            detector.device,
            detector.dtype,
        )

    def labels_for(self, record: dict[str, Any]) -> tuple[str, ...]:
        if "labels" in record:
            return parse_labels(record["labels"], "`labels`")
        if self.detector.open_vocabulary and not self.settings.labels:
            raise RecordError(f"{self.detector.ref.name} is an open-vocabulary model: give --labels "
                              "\"cat,remote control\" or a `labels` field")
        return self.settings.labels

    def prepare(self, item: Item) -> PreparedImage:
        record = item.record or {}
        labels = self.labels_for(record)
        started = time.perf_counter()
        image = load_image(record, self.settings.images)
        return PreparedImage(item, image, labels, time.perf_counter() - started)

    def keep(self, p: PreparedImage, detections: list[Detection]) -> list[Detection]:
        if not self.detector.open_vocabulary and p.labels:  # a closed-set model: keep only these labels
            detections = [d for d in detections if d.label in p.labels]
        return detections[: self.settings.top] if self.settings.top else detections

    def output(self, p: PreparedImage, result: DetectionResult) -> dict[str, Any]:
        record = dict(p.item.record or {})
        detections = self.keep(p, result.detections)
        record["width"], record["height"] = p.image.image.size
        record["detections"] = [d.record() for d in detections]
        if self.annotator is not None:
            record["annotated"] = self.annotator.write(p.image.image, detections, p.image.source, p.item.line)
        record["stats"] = {
            "detections": len(detections),
            "load_s": round(p.load_s, 6),
            "inference_s": round(result.inference_s, 6),
            "total_s": round(p.load_s + result.inference_s, 6),
            "rows": result.rows,
            "batch": result.batch,
        }
        record["manifest"] = self.manifest
        return record

    def process(self, batch: list[Item]) -> Iterator[Finished]:
        ready: list[PreparedImage] = []
        for item in batch:
            try:
                ready.append(self.prepare(item))
            except RecordError as exc:
                yield Finished(item, error_record(item, str(exc)), failed=True)
        if not ready:
            return
        requests = [DetectionRequest(p.image.image, p.labels if self.detector.open_vocabulary else ()) for p in ready]
        for p, result in zip(ready, detect(self.detector, requests, self.threshold, self.batch_size), strict=True):
            if result.error is not None:
                yield Finished(p.item, error_record(p.item, result.error), failed=True)
                continue
            try:
                yield Finished(p.item, self.output(p, result))
            except OSError as exc:  # --annotate could not write
                yield Finished(p.item, error_record(p.item, f"cannot write the annotated image: {exc}"), failed=True)


@dataclass(frozen=True)
class DetectRun:
    """One lm-detect run: what to keep, with which model, over which records."""

    settings: DetectSettings
    model: VisionSettings
    pipe: PipeSettings = field(default_factory=PipeSettings)


def run(r: DetectRun, tty: bool) -> int:
    """lm-detect: settings and model first (fail fast), then stdin to stdout."""
    job = r.pipe.job.open()
    tty = tty and not job.to_file
    detector = load_detector(r.model)
    batch_size = batch_size_for(r.pipe.batch_size, tty)
    task = DetectTask(detector, r.settings, batch_size)
    sink: Any = DetectTtySink() if tty else JsonlSink()
    return run_records("lm-detect", task.process, sink, batch_size, r.pipe.progress, job=job)
