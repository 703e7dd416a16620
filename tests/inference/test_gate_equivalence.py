"""The accuracy gate's number is the device's number: the same outputs through the device path
(`Task.decode`, frame coordinates) and the gate path (`export.evaluate.predictions`, model space) give the
same decisions, for every task kind and every activation, including the cases the two used to disagree
on (a 1-channel "softmax" segmentation, per-label thresholds in a multi-class mask)."""

from __future__ import annotations

import numpy as np
import pytest

from edge.frames import Frame
from edge.inference.preprocess import Preprocessor, PreprocessSpec
from edge.inference.tasks import TASK_KINDS, Output, TaskConfig, build_task
from export import evaluate
from export.datasets import Sample, ValidationSet

MODEL = (48, 64)  # model input (h, w); frames below are letterboxed into it
FRAMES = [(90, 160), (120, 80), (48, 64)]


def _geometries():
    pre = Preprocessor(PreprocessSpec(size=MODEL))
    out = []
    for h, w in FRAMES:
        f = Frame(pixels=np.zeros((h, w), np.uint8), modality="US", source="t", spacing_mm=(0.3, 0.3))
        out.append((f, pre.apply(f)[1]))
    return out


def _both(cfg: TaskConfig, outputs: list[dict[str, np.ndarray]]):
    task = build_task(cfg)
    geoms = _geometries()
    vs = ValidationSet(cfg.task, [Sample(f"s{i}", np.zeros((1, 1, *MODEL), np.float32), g, f.spacing_mm)
                                  for i, (f, g) in enumerate(geoms)])
    gate = evaluate.predictions(task, vs, outputs)
    device = [task.decode(o, g, f) for o, (f, g) in zip(outputs, geoms, strict=True)]
    decisions = evaluate.decisions(gate, task)
    assert list(decisions) == [any(d.positive for d in dets) for dets in device]
    return task, geoms, gate.items, device


CLASSIFY = [("sigmoid", 1, ("normal", "opacity")), ("sigmoid", 2, ("normal", "opacity")),
            ("sigmoid", 3, ("a", "b", "c")), ("softmax", 1, ("opacity",)), ("softmax", 2, ("normal", "opacity")),
            ("softmax", 3, ("normal", "b", "c")), ("none", 1, ("opacity",))]


@pytest.mark.parametrize("activation,channels,labels", CLASSIFY)
def test_classify(activation, channels, labels):
    rng = np.random.default_rng(channels)
    for trial in range(20):
        y = rng.normal(0, 2, (1, channels)).astype(np.float32)
        if activation == "none":
            y = rng.uniform(0, 1, (1, channels)).astype(np.float32)
        cfg = TaskConfig("classify", labels, (Output("logits", activation),), threshold=0.5, review_band=(0.45, 0.55))
        task, _, gate, device = _both(cfg, [{"logits": y}] * len(FRAMES))
        for pred, dets in zip(gate, device, strict=True):
            positive = {d.label: round(d.confidence, 6) for d in dets if d.positive}
            assert positive == {lb: round(c, 6) for lb, c in pred.candidates if c >= task.threshold}, trial


SEGMENT = [("sigmoid", 1, ("background", "fluid"), 0.5), ("softmax", 1, ("fluid",), 0.5), ("none", 1, ("fluid",), 0.5),
           ("softmax", 3, ("background", "fluid", "clot"), 0.5), ("sigmoid", 3, ("fluid", "clot", "air"), 0.5),
           ("sigmoid", 1, ("fluid",), 0.3)]  # pixels above mask_threshold 0.3, finding threshold 0.9


@pytest.mark.parametrize("activation,channels,labels,mask_threshold", SEGMENT)
def test_segment(activation, channels, labels, mask_threshold):
    rng = np.random.default_rng(10 + channels)
    for trial in range(6):
        outputs = []
        for _ in FRAMES:
            y = rng.normal(-1.5, 1.5, (1, channels, *MODEL)).astype(np.float32)
            y[:, :, 10:30, 15:40] += 4.0  # a blob that survives in most trials
            if activation == "none":
                y = 1 / (1 + np.exp(-y))
            outputs.append({"mask": y})
        thr = 0.5 if mask_threshold == 0.5 else 0.9
        cfg = TaskConfig("segment", labels, (Output("mask", activation),), threshold=thr, review_band=(0.45, 0.55),
                         postprocess={"min_area_px": 6, "mask_threshold": mask_threshold})
        task, geoms, gate, device = _both(cfg, outputs)
        for mask, dets, (_, g) in zip(gate, device, geoms, strict=True):
            frame_px = 1.0 / (g.scale_x * g.scale_y)
            areas = [d.measurements["area_px"] / frame_px for d in dets if d.positive]  # model pixels
            if activation == "sigmoid" and channels > 1:  # independent labels may overlap: the gate takes the union
                assert max(areas, default=0) - 0.5 <= mask.sum() <= sum(areas) + 0.5, trial
            else:
                assert mask.sum() == pytest.approx(sum(areas), abs=0.5), trial
            outside = mask.copy()
            g.content(outside)[...] = False
            assert not outside.any()  # letterbox padding never holds a finding, on either path


def test_segment_regions_above_the_mask_threshold_but_below_the_finding_threshold_are_no_finding():
    y = np.zeros((1, 1, *MODEL), np.float32)
    y[:, :, 10:30, 15:40] = 0.7  # a region: pixels pass mask_threshold 0.3, confidence 0.7 < threshold 0.9
    y[:, :, 35:45, 5:12] = 0.95  # a smaller one that is a finding on its own... but not the largest
    cfg = TaskConfig("segment", ("fluid",), (Output("mask", "none"),), threshold=0.9, review_band=(0.45, 0.55),
                     postprocess={"min_area_px": 6, "mask_threshold": 0.3})
    _, _, gate, device = _both(cfg, [{"mask": y}] * len(FRAMES))
    # the largest region decides the label's confidence (0.7): no finding, no gate region, on both paths
    assert all(not any(d.positive for d in dets) for dets in device)
    assert all(not m.any() for m in gate)


DETECT = [("sigmoid", 1, ("background", "lesion"), 1), ("sigmoid", 2, ("lesion", "nodule"), 1),
          ("softmax", 3, ("background", "lesion", "nodule"), 2), ("none", 1, ("lesion",), 1)]


@pytest.mark.parametrize("activation,classes,labels,n_outputs", DETECT)
def test_detect(activation, classes, labels, n_outputs):
    rng = np.random.default_rng(20 + classes)
    for trial in range(10):
        outputs = []
        for _ in FRAMES:
            n = 30
            xy = rng.uniform(0, 40, (n, 2))
            wh = rng.uniform(4, 20, (n, 2))
            boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
            scores = rng.normal(0, 2, (n, classes)).astype(np.float32)
            if activation == "none":
                scores = 1 / (1 + np.exp(-scores))
            if n_outputs == 2:
                outputs.append({"boxes": boxes[None], "scores": scores[None]})
            else:
                outputs.append({"det": np.concatenate([boxes, scores], 1)[None]})
        names = ("boxes", "scores") if n_outputs == 2 else ("det",)
        cfg = TaskConfig("detect", labels, tuple(Output(nm, activation) for nm in names), threshold=0.5,
                         review_band=(0.45, 0.55))
        task, geoms, gate, device = _both(cfg, outputs)
        for rows, dets, (_, g) in zip(gate, device, geoms, strict=True):
            want = sorted((labels.index(d.label), *np.round(b[:4], 1), round(b[4], 4))
                          for d in dets for b in d.geometry["boxes"] if b[4] >= task.threshold)
            got = []
            for x0, y0, x1, y1, li, s in rows:
                pts = g.points_to_frame(np.array([[x0, y0], [x1, y1]], np.float64)).reshape(-1)
                got.append((int(li), *np.round(pts, 1), round(float(s), 4)))
            assert sorted(got) == want, trial


def test_every_registered_kind_is_covered():
    assert set(TASK_KINDS) == {"classify", "segment", "detect"}
    for kind in TASK_KINDS.values():
        mod = kind.load()
        for name in ("TASK", "gate_prediction", "decision", "score", "check_truth", "read_truth"):
            assert hasattr(mod, name), (kind.name, name)
