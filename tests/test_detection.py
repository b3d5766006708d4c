"""lmpipe.vision.detection: batching never changes an image's result; both open-vocabulary paths agree."""

from __future__ import annotations

from dataclasses import astuple

import pytest
from PIL import Image
from tiny_images import noise

from lmpipe.vision.detection import Box, DetectionRequest, detect, multi_query, pixel_box
from lmpipe.vision.loading import VisionSettings, load_detector


@pytest.fixture(scope="module")
def owl(tiny_owlvit):
    return load_detector(VisionSettings(str(tiny_owlvit)))


@pytest.fixture(scope="module")
def detr(tiny_detr):
    return load_detector(VisionSettings(str(tiny_detr)))


def images():
    return [Image.fromarray(noise(w, h, seed=w)) for w, h in ((60, 40), (60, 40), (25, 70))]


def flat(results):
    return [sorted((d.label, astuple(d.box), d.score) for d in r.detections) for r in results]


def assert_same(a, b):
    a, b = flat(a), flat(b)
    assert [len(x) for x in a] == [len(x) for x in b]
    for x, y in zip(a, b, strict=True):
        assert [d[:2] for d in x] == [d[:2] for d in y]
        assert [d[2] for d in x] == pytest.approx([d[2] for d in y], abs=1e-5)


def test_pixel_box_truncates_and_clamps():
    import torch

    assert pixel_box(torch.tensor([-3.7, 2.9, 70.2, 39.99]), 60, 40) == Box(0, 2, 60, 39)


def test_batch_size_does_not_change_results(detr):
    requests = [DetectionRequest(image) for image in images()]
    one = detect(detr, requests, threshold=0.0, batch_size=1)
    many = detect(detr, requests, threshold=0.0, batch_size=8)
    assert_same(one, many)
    assert [r.batch for r in many] == [2, 2, 1] and [r.batch for r in one] == [1, 1, 1]
    alone = detect(detr, requests[2:], threshold=0.0)
    assert_same(alone, many[2:])


def test_owl_query_batching_equals_one_row_per_label(owl):
    assert multi_query(owl)
    requests = [DetectionRequest(image, ("cat", "remote control", "a dog on a couch")) for image in images()]
    requests.append(DetectionRequest(images()[0], ("dog",)))
    together = detect(owl, requests, threshold=0.0, query_batching=True)
    apart = detect(owl, requests, threshold=0.0, query_batching=False)
    assert [r.rows for r in together] == [1, 1, 1, 1] and [r.rows for r in apart] == [3, 3, 3, 1]
    assert_same(together, apart)
    assert {d.label for d in together[3].detections} == {"dog"}
    for result in together:
        scores = [d.score for d in result.detections]
        assert scores == sorted(scores, reverse=True) and len(scores) > 0
