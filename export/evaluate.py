"""The accuracy gate: FP32 vs INT8 on the labelled validation set, with the task's clinical metrics.

Outputs are decoded in model space with the manifest's own conventions (activation, threshold,
``postprocess`` box format), mirroring `edge.inference.tasks`, so the gate judges the decisions the device will make,
not raw tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import metrics as M
from .datasets import ValidationSet

PRIMARY = {"classify": "auroc", "segment": "dice", "detect": "recall"}
DEFAULT_MAX_DROP = {"classify": 0.01, "segment": 0.02, "detect": 0.02}
LOWER_IS_BETTER = {"area_error"}


@dataclass(frozen=True)
class TaskSpec:
    """The slice of the manifest needed to turn outputs into decisions."""

    task: str
    labels: tuple[str, ...]
    threshold: float
    activation: str = "none"
    output: str | None = None
    postprocess: dict[str, Any] = field(default_factory=dict)


@dataclass
class Predictions:
    """Per-sample decoded outputs of one model variant."""

    scores: np.ndarray | None = None  # classify: (N,) positive-class probability, or (N, K)
    masks: list[np.ndarray] = field(default_factory=list)  # segment: (H, W) bool
    boxes: list[np.ndarray] = field(default_factory=list)  # detect: (M, 6) x0 y0 x1 y1 label score


def make_session(path: Path | str, threads: int = 2, optimize: bool = True, exact_int8: bool = True):
    """A CPU session configured exactly as the device configures its own (edge.inference.backends.onnxruntime)."""
    import onnxruntime as ort

    from edge.inference.backends.onnxruntime import session_options

    o = session_options(threads, 1, exact_int8=exact_int8, optimize=optimize)
    return ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _act(x: np.ndarray, activation: str, axis: int) -> np.ndarray:
    if activation == "sigmoid":
        return _sigmoid(x)
    if activation == "softmax":
        return _softmax(x, axis)
    return x


def predict(model_path: Path, vs: ValidationSet, spec: TaskSpec, exact_int8: bool = True) -> Predictions:
    sess = make_session(model_path, exact_int8=exact_int8)
    name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    first = spec.output if spec.output in outs else outs[0]
    pred = Predictions()
    scores = []
    for s in vs.samples:
        res = dict(zip(outs, sess.run(None, {name: s.tensor}), strict=True))
        y = np.asarray(res[first], np.float32)
        if spec.task == "classify":
            p = _act(y.reshape(-1), spec.activation, 0)
            scores.append(p)
        elif spec.task == "segment":
            pred.masks.append(_segment_mask(y, spec))
        else:
            pred.boxes.append(_detect_boxes(res, outs, spec, s.tensor.shape[2:]))
    if spec.task == "classify":
        arr = np.stack(scores)
        pred.scores = arr[:, -1] if arr.shape[1] in (1, 2) else arr
    return pred


def _segment_mask(y: np.ndarray, spec: TaskSpec) -> np.ndarray:
    while y.ndim > 3:
        y = y[0]
    if y.ndim == 2:
        y = y[None]
    thr = float(spec.postprocess.get("mask_threshold", spec.threshold))
    if y.shape[0] == 1:
        return _act(y[0], spec.activation if spec.activation != "softmax" else "sigmoid", 0) >= thr
    p = _act(y, spec.activation, 0)
    return np.argmax(p, 0) > 0


def _detect_boxes(res: dict, outs: list[str], spec: TaskSpec, hw: tuple[int, int]) -> np.ndarray:
    pp = spec.postprocess
    if len(outs) >= 2:
        boxes = np.asarray(res[outs[0]], np.float32).reshape(-1, 4)
        scores = np.asarray(res[outs[1]], np.float32).reshape(boxes.shape[0], -1)
    else:
        y = np.asarray(res[outs[0]], np.float32)
        y = y.reshape(-1, y.shape[-1])
        boxes, scores = y[:, :4], y[:, 4:]
    scores = _act(scores, spec.activation, 1)
    if pp.get("box_format", "xyxy") == "cxcywh":
        cx, cy, w, h = boxes.T
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    if pp.get("boxes_normalized", False):
        boxes = boxes * np.array([hw[1], hw[0], hw[1], hw[0]], np.float32)
    nms = float(pp.get("nms_iou", 0.45))
    rows = []
    for c in range(scores.shape[1]):
        s = scores[:, c]
        idx = np.nonzero(s >= spec.threshold)[0]
        if not idx.size:
            continue
        b = boxes[idx]
        rects = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in b]
        kept = np.asarray(cv2.dnn.NMSBoxes(rects, s[idx].astype(float).tolist(), spec.threshold, nms)).reshape(-1)
        label = c if scores.shape[1] > 1 else max(0, len(spec.labels) - 1)
        rows += [[*b[k], label, s[idx[k]]] for k in kept]
    return np.array(rows, np.float32).reshape(-1, 6)


def score(vs: ValidationSet, pred: Predictions, spec: TaskSpec) -> dict[str, float | None]:
    if spec.task == "classify":
        s = pred.scores
        if s.ndim == 1:
            return M.classification(vs.labels, s, spec.threshold)
        per = [M.classification(vs.labels == k, s[:, k], spec.threshold) for k in range(s.shape[1])]
        return {k: _mean([p[k] for p in per]) for k in per[0]}
    if spec.task == "segment":
        return M.segmentation(vs.masks, pred.masks)
    return M.detection(vs.boxes, pred.boxes)


def _mean(vals: list) -> float | None:
    v = [x for x in vals if x is not None]
    return float(np.mean(v)) if v else None


def decisions(pred: Predictions, spec: TaskSpec) -> np.ndarray:
    if spec.task == "classify":
        return (pred.scores >= spec.threshold).reshape(len(pred.scores), -1).any(1) if pred.scores.ndim > 1 \
            else pred.scores >= spec.threshold
    if spec.task == "segment":
        return np.array([m.any() for m in pred.masks])
    return np.array([len(b) > 0 for b in pred.boxes])


@dataclass
class GateResult:
    fp32: dict[str, float | None]
    int8: dict[str, float | None]
    deltas: dict[str, float | None]
    agreement: float
    primary: str
    drop: float
    budget: float

    @property
    def passed(self) -> bool:
        return self.drop <= self.budget + 1e-12

    def to_dict(self) -> dict[str, Any]:
        r = lambda v: None if v is None else round(float(v), 5)  # noqa: E731
        return {"primary_metric": self.primary, "budget": r(self.budget), "drop": r(self.drop), "passed": self.passed,
                "fp32": {k: r(v) for k, v in self.fp32.items()}, "int8": {k: r(v) for k, v in self.int8.items()},
                "delta_int8_minus_fp32": {k: r(v) for k, v in self.deltas.items()}, "agreement": r(self.agreement)}


def gate(vs: ValidationSet, spec: TaskSpec, ref: Predictions, cand: Predictions, budget: float) -> GateResult:
    a, b = score(vs, ref, spec), score(vs, cand, spec)
    deltas = {k: (None if a[k] is None or b.get(k) is None else b[k] - a[k]) for k in a}
    primary = PRIMARY[spec.task]
    if a[primary] is None:  # e.g. AUROC with one class only: fall back to accuracy
        primary = "accuracy" if spec.task == "classify" else primary
    drop = 0.0 if deltas.get(primary) is None else -deltas[primary]
    if primary in LOWER_IS_BETTER:
        drop = -drop
    return GateResult(a, b, deltas, M.agreement(decisions(ref, spec), decisions(cand, spec)), primary, drop, budget)
