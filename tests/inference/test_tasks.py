"""Output decoders: thresholds, review band, urgent priority, segmentation measurements in mm², NMS."""

import numpy as np
import pytest

from edge.config import ModelConfig
from edge.frames import Frame, Region
from edge.inference.backends import build_backend
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import build_task
from edge.inference.tasks.classify import Classify
from edge.inference.tasks.detect import Detect
from tests.support.bundles import blob_image, write_bundle


def _run(bundle, pixels, spacing=(0.5, 0.5), region=None, overlays=False):
    mc = ModelConfig(name="m", bundle=bundle.root, require_signature=False, warmup_runs=0)
    be = build_backend(bundle, mc)
    f = Frame(pixels=pixels, modality="US", source="t", spacing_mm=spacing, region=region)
    x, g = Preprocessor(bundle.manifest.preprocess).apply(f)
    return build_task(bundle.manifest, overlays=overlays).decode(be.run(x), g, f)


def test_segment_area_mm2_contour_and_urgent(tmp_path):
    b = load_bundle(write_bundle(tmp_path / "b"))
    # 128x128 frame -> 64x64 model input: one model pixel is 2x2 frame pixels = 1 mm² at 0.5 mm spacing.
    (d,) = _run(b, blob_image(box=(32, 32, 64, 64)))
    assert d.label == "free_fluid" and d.positive and not d.needs_review and d.priority == "urgent"
    assert d.measurements["area_mm2"] == pytest.approx(32 * 32 * 0.25, rel=0.02)
    assert d.measurements["regions"] == 1
    (contour,) = d.geometry["contours"]
    xs, ys = [p[0] for p in contour], [p[1] for p in contour]
    assert 30 <= min(xs) <= 34 and 60 <= max(xs) <= 66 and 30 <= min(ys) <= 34 and 60 <= max(ys) <= 66
    assert d.geometry["largest_box"] == pytest.approx([32, 32, 64, 64], abs=2)


def test_segment_letterbox_and_two_regions_largest_first(tmp_path):
    b = load_bundle(write_bundle(tmp_path / "b"))
    img = np.full((100, 200), 10, np.uint8)  # letterboxed: 200 wide -> scale 0.32, padding top/bottom
    img[20:60, 10:50] = 240  # 40x40 = 1600 px
    img[70:80, 150:170] = 240  # 10x20 = 200 px
    (d,) = _run(b, img, spacing=(0.2, 0.2))
    assert d.measurements["regions"] == 2
    assert d.measurements["area_mm2"] == pytest.approx(1800 * 0.04, rel=0.15)
    assert d.measurements["largest_area_mm2"] == pytest.approx(1600 * 0.04, rel=0.15)
    assert d.geometry["largest_box"] == pytest.approx([10, 20, 50, 60], abs=4)


def test_segment_no_spacing_reports_pixels_only_and_empty_frame_nothing(tmp_path):
    b = load_bundle(write_bundle(tmp_path / "b"))
    (d,) = _run(b, blob_image(), spacing=None)
    assert "area_mm2" not in d.measurements and d.measurements["area_px"] == pytest.approx(1024, rel=0.05)
    assert _run(b, blob_image(box=None)) == []


def test_segment_overlay_only_with_imaging_region(tmp_path):
    b = load_bundle(write_bundle(tmp_path / "b"))
    import base64

    import cv2

    from edge.inference.tasks.overlay import render
    (d,) = _run(b, blob_image(), overlays=True)
    assert d.picture is not None and render(d.picture, d, 256) is None  # unknown imaging region: text could leak
    img = blob_image()
    img[0:10, :] = 255  # "burned-in text" band outside the region
    (d,) = _run(b, img, region=Region(0, 16, 128, 128), overlays=True)
    png = cv2.imdecode(np.frombuffer(base64.b64decode(render(d.picture, d, 256)), np.uint8), cv2.IMREAD_COLOR)
    band = png.shape[0] - 128  # the caption (label, confidence) sits on a band above the image
    assert 10 <= band <= 40 and png.shape[1] == 128 and png[:band].max() > 0  # the caption is drawn
    assert png[band:band + 16].max() == 0 and png[band + 40, 40].max() > 0  # outside the region: black


def test_classify_threshold_review_band_priority(tmp_path):
    b = load_bundle(write_bundle(tmp_path / "c", task="classify", size=32, labels=("opacity",), urgent=("opacity",),
                                 threshold=0.5, review_band=(0.3, 0.7)))
    t = Classify(b.manifest)
    from edge.inference.preprocess import Geometry
    g = Geometry((32, 32), Region(0, 0, 32, 32), 1, 1, 0, 0, (32, 32), (32, 32))
    f = Frame(pixels=np.zeros((32, 32), np.uint8), modality="CR", source="t")

    def at(p):
        logit = np.log(p / (1 - p))
        return t.decode({"logits": np.array([[logit]], np.float32)}, g, f)

    assert at(0.1) == []
    (low,) = at(0.4)
    assert (low.positive, low.needs_review, low.priority) == (False, True, "low")
    (unsure,) = at(0.6)
    assert (unsure.positive, unsure.needs_review, unsure.priority) == (True, True, "routine")
    (sure,) = at(0.95)
    assert (sure.positive, sure.needs_review, sure.priority) == (True, False, "urgent")
    assert sure.confidence == pytest.approx(0.95, abs=1e-4)
    # and through a real session: bright image -> high probability
    (real,) = _run(b, np.full((64, 64), 250, np.uint8))
    assert real.positive and real.confidence > 0.99


def test_detect_nms_and_frame_coordinates(tmp_path):
    b = load_bundle(write_bundle(tmp_path / "d", task="classify", size=32, labels=("background", "nodule"),
                                 urgent=(), postprocess={"nms_iou": 0.5}))
    from dataclasses import replace
    m = replace(b.manifest, task="detect", outputs=(replace(b.manifest.outputs[0], name="boxes", activation="none"),
                                                    replace(b.manifest.outputs[0], name="scores", activation="none")))
    t = Detect(m)
    from edge.inference.preprocess import Geometry
    g = Geometry((64, 64), Region(0, 0, 64, 64), 0.5, 0.5, 0, 0, (32, 32), (32, 32))  # frame is 2x model size
    f = Frame(pixels=np.zeros((64, 64), np.uint8), modality="CR", source="t", spacing_mm=(1.0, 1.0))
    boxes = np.array([[[2, 2, 10, 10], [3, 3, 11, 11], [20, 20, 30, 30], [0, 0, 1, 1]]], np.float32)
    scores = np.array([[[0.0, 0.9], [0.0, 0.8], [0.0, 0.7], [0.0, 0.1]]], np.float32)
    (d,) = t.decode({"boxes": boxes, "scores": scores}, g, f)
    assert d.label == "nodule" and d.confidence == pytest.approx(0.9)
    assert len(d.geometry["boxes"]) == 2  # the overlapping 0.8 box is suppressed, the 0.1 box is below the band
    assert d.geometry["boxes"][0][:4] == pytest.approx([4, 4, 20, 20])
    assert d.measurements["count"] == 2 and d.measurements["largest_box_w_mm"] == pytest.approx(16)
