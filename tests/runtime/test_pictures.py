"""Pictures a clinician can look at: `medge replay --overlays/--video` on the reference inputs, the CAM on the
reference X-ray, and the overlay policy (urgent and needs-review findings by default)."""

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.commands.replay import replay_file
from edge.frames import Frame, Region
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Geometry
from edge.inference.tasks.base import Detection
from edge.inference.tasks.overlay import OverlayPolicy, Picture, render
from edge.runtime.finding_builder import FindingBuilder

ROOT = Path(__file__).resolve().parents[2]
SAMPLES, BUNDLES = ROOT / "models/samples", ROOT / "models/bundles"
TRUTH = json.loads((SAMPLES / "truth.json").read_text())


def _replay(file: str, bundle: str, tmp_path, **kw) -> tuple[int, list[dict], list[str]]:
    lines: list[str] = []
    rc = replay_file(SAMPLES / file, BUNDLES / bundle, realtime=False, as_json=True, echo=lines.append, **kw)
    found = [json.loads(x)["finding"] for x in lines if '"finding"' in x]
    return rc, found, lines


def _png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, f"{path} is not a readable PNG"
    return img


def test_cam_highlights_the_synthetic_opacity(tmp_path):
    assert load_bundle(BUNDLES / "cxr-opacity").manifest.explanation["kind"] == "cam"
    rc, (f,), _ = _replay("cxr_opacity.dcm", "cxr-opacity", tmp_path, overlays_dir=tmp_path / "ov")
    o = TRUTH["cxr_opacity.dcm"]["opacity"]
    x, y = f["geometry"]["heatmap_peak"]
    assert rc == 0 and np.hypot(x - o["cx"], y - o["cy"]) <= o["radius"]  # the map's peak lies in the lesion
    assert f["code"] == {"scheme": "SCT", "value": "52988006", "meaning": "Lesion"}
    (png,) = (tmp_path / "ov").glob("*.png")
    img = _png(png)
    band = img.shape[0] - 512  # 512x512 sample below a caption band
    hot = img[band:].astype(int)
    red = (hot[..., 2] - hot[..., 0]) > 80  # the jet colormap's hot end, drawn over the lesion only
    ys, xs = np.nonzero(red)
    assert red.sum() > 50 and np.hypot(xs.mean() - o["cx"], ys.mean() - o["cy"]) <= o["radius"]
    rc, found, _ = _replay("cxr_normal.dcm", "cxr-opacity", tmp_path, overlays_dir=tmp_path / "ov2")
    assert found == [] and not list((tmp_path / "ov2").glob("*.png"))


def test_replay_writes_overlays_and_an_annotated_video_for_the_cine(tmp_path):
    rc, (f,), lines = _replay("us_cine.dcm", "us-free-fluid", tmp_path, overlays_dir=tmp_path / "ov",
                              video=tmp_path / "cine.mp4")
    assert rc == 0 and f["label"] == "free_fluid"
    (png,) = (tmp_path / "ov").glob("*.png")
    img = _png(png)
    assert img.shape[1] == 256 and img.shape[0] > 256  # the frame plus the caption band
    cap = cv2.VideoCapture(str(tmp_path / "cine.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == TRUTH["us_cine.dcm"]["frames"]
    assert not list(tmp_path.glob(".cine.partial*"))  # written under a temporary name, then renamed


def test_overlay_policy_urgent_or_review_by_default(tmp_path):
    frame = Frame(pixels=np.full((64, 64), 128, np.uint8), modality="CR", source="t")
    geom = Geometry((64, 64), Region(0, 0, 64, 64), 1.0, 1.0, 0, 0, (64, 64), (64, 64))
    pic = Picture(frame, geom, boxes=[[10, 10, 30, 30, 0.9]])
    b = load_bundle(BUNDLES / "cxr-opacity")
    from edge.findings import ModelRef

    builder = FindingBuilder("d", ModelRef("m", "1", "0" * 64), overlays=OverlayPolicy())
    routine = builder.build(Detection("x", 0.9, True, False, "routine", picture=pic), frame, 1.0)
    urgent = builder.build(Detection("x", 0.9, True, False, "urgent", picture=pic), frame, 1.0)
    review = builder.build(Detection("x", 0.55, True, True, "routine", picture=pic), frame, 1.0)
    assert routine.overlay_png_b64 is None and urgent.overlay_png_b64 and review.overlay_png_b64
    img = cv2.imdecode(np.frombuffer(base64.b64decode(review.overlay_png_b64), np.uint8), cv2.IMREAD_COLOR)
    assert img.shape[1] == 64 and img.shape[0] > 64  # caption band on top
    big = Picture(Frame(pixels=np.random.default_rng(0).integers(0, 255, (2000, 1500), np.uint8), modality="CR",
                        source="t"), geom)
    d = Detection("x", 0.9, True, False, "urgent")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(render(big, d, 384)), np.uint8), cv2.IMREAD_COLOR)
    assert max(img.shape[:2]) == 384  # size-capped
    with pytest.raises(ValueError):
        OverlayPolicy("sometimes")
    assert b.manifest.codes  # the reference classifier names its label with a code


def test_detector_overlay_draws_its_boxes_on_the_nodules(tmp_path):
    rc, (f,), _ = _replay("cxr_nodule.dcm", "cxr-nodule", tmp_path, overlays_dir=tmp_path / "ov")
    assert rc == 0 and f["label"] == "nodule" and len(f["geometry"]["boxes"]) == 2
    (png,) = (tmp_path / "ov").glob("*.png")
    img = _png(png).astype(int)
    h, w = TRUTH["cxr_nodule.dcm"]["size"]
    band = img.shape[0] - h
    yellow = (img[band:, :, 2] > 200) & (img[band:, :, 1] > 180) & (img[band:, :, 0] < 80)  # the routine colour
    for x0, y0, x1, y1, _ in TRUTH["cxr_nodule.dcm"]["boxes"]:  # a drawn outline around each true nodule
        ring = yellow[max(0, int(y0) - 4):int(y1) + 5, max(0, int(x0) - 4):int(x1) + 5]
        assert ring.sum() >= 8, (x0, y0)
    assert yellow.sum() < 0.05 * yellow.size  # boxes and their scores, not a tinted image
