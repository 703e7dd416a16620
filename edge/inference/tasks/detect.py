"""Detection: boxes and scores, per-label non-maximum suppression, boxes reported in frame coordinates.

Accepts either one output (1, N, 4 + C) or two outputs named in the manifest order: boxes (1, N, 4) and
scores (1, N, C) or (1, N).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.errors import InputError
from edge.inference import metrics as M
from edge.inference.tasks.base import Detection, Task, TaskConfig, apply_activation, clip01
from edge.inference.tasks.overlay import Picture

if TYPE_CHECKING:
    from edge.frames import Frame
    from edge.inference.preprocess import Geometry


@dataclass
class LabelBoxes:
    """Model-space result for one label: boxes kept by NMS (xyxy, model pixels), highest score first,
    down to the lower of the threshold and the review band."""

    label: str
    boxes: np.ndarray  # (K, 4)
    scores: np.ndarray  # (K,)

    @property
    def confidence(self) -> float:
        return clip01(self.scores[0]) if len(self.scores) else 0.0


class Detect(Task):
    def __init__(self, config: TaskConfig | Any, overlays: bool = False) -> None:
        super().__init__(config, overlays)
        pp = self.m.postprocess
        self.fmt = str(pp.get("box_format", "xyxy"))
        self.normalized = bool(pp.get("boxes_normalized", False))
        self.iou = float(pp.get("nms_iou", 0.45))
        self.max_det = int(pp.get("max_detections", 50))

    def split(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        names = [o.name for o in self.m.outputs if o.name in outputs] or list(outputs)
        activation = self.activation
        if len(names) >= 2:
            boxes = np.asarray(outputs[names[0]], np.float32).reshape(-1, 4)
            scores = np.asarray(outputs[names[1]], np.float32)
            scores = scores.reshape(boxes.shape[0], -1)
            # two outputs: the scores' own activation (boxes are coordinates, never activated)
            activation = next((o.activation for o in self.m.outputs if o.name == names[1]), activation)
        else:
            y = np.asarray(outputs[names[0]], np.float32)
            y = y.reshape(-1, y.shape[-1])
            boxes, scores = y[:, :4], y[:, 4:]
        return boxes, apply_activation(scores, activation, 1)

    def model_space(self, outputs: dict[str, np.ndarray], geom: Geometry) -> list[LabelBoxes]:
        boxes, scores = self.split(outputs)
        if boxes.size == 0:
            return []
        if self.fmt == "cxcywh":
            cx, cy, w, h = boxes.T
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        if self.normalized:
            mh, mw = geom.model_size
            boxes = boxes * np.array([mw, mh, mw, mh], np.float32)
        labels = self.labels
        if scores.shape[1] == 1 and len(labels) > 1:
            label_names = [lb for lb in labels if not self.is_background(lb)][:1] or [labels[-1]]
        else:
            label_names = list(labels[: scores.shape[1]])
        lo = min(self.band[0], self.threshold)
        out = []
        for c, label in enumerate(label_names):
            if self.is_background(label):
                continue
            s = scores[:, c]
            idx = np.nonzero(s >= lo)[0]
            if idx.size == 0:
                continue
            b = boxes[idx]
            rects = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in b]
            kept = cv2.dnn.NMSBoxes(rects, s[idx].astype(float).tolist(), float(lo), self.iou)
            kept = sorted((int(k) for k in np.asarray(kept).reshape(-1)), key=lambda k: -s[idx[k]])[: self.max_det]
            if kept:
                out.append(LabelBoxes(label, b[kept], s[idx[kept]]))
        return out

    def decode(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> list[Detection]:
        spacing = geom.model_spacing_mm(frame.spacing_mm)
        out = []
        for r in self.model_space(outputs, geom):
            j = self.judge(r.label, r.confidence)
            if j is None:
                continue
            frame_boxes = []
            for (x0, y0, x1, y1), sc in zip(r.boxes, r.scores, strict=True):
                pts = geom.points_to_frame(np.array([[x0, y0], [x1, y1]], np.float64))
                frame_boxes.append([round(float(v), 1) for v in pts.reshape(-1)] + [round(float(sc), 4)])
            meas = {"count": float(np.sum(r.scores >= self.threshold))}
            if spacing:
                x0, y0, x1, y1 = r.boxes[0]
                meas["largest_box_w_mm"] = round(float(x1 - x0) * spacing[1], 2)
                meas["largest_box_h_mm"] = round(float(y1 - y0) * spacing[0], 2)
            det = Detection(r.label, r.confidence, j[0], j[1], j[2], meas,
                            {"boxes": frame_boxes, "frame_size": [frame.height, frame.width]})
            if self.overlays:
                det.picture = Picture(frame, geom, boxes=frame_boxes)
            out.append(det)
        return out

    def peak_scores(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> dict[str, float]:
        return {r.label: r.confidence for r in self.model_space(outputs, geom)}


TASK = Detect


# ------------------------------------------------------------------------------ the accuracy gate's side


def gate_prediction(task: Detect, outputs: dict[str, np.ndarray], geom: Geometry,
                    spacing_mm: tuple[float, float] | None = None) -> np.ndarray:
    """Rows x0 y0 x1 y1 label-index score (model space) of every box at or above the threshold."""
    rows = []
    for r in task.model_space(outputs, geom):
        li = task.labels.index(r.label)
        rows += [[*b, li, s] for b, s in zip(r.boxes, r.scores, strict=True) if s >= task.threshold]
    return np.array(rows, np.float32).reshape(-1, 6)


def decision(task: Detect, pred: np.ndarray) -> bool:
    return len(pred) > 0


def score(truth: list[np.ndarray], preds: list[np.ndarray], task: Detect) -> dict[str, float | None]:
    return M.detection(truth, preds)


def _boxes(folder: Path) -> dict:
    src = folder / "boxes.json"
    if not src.is_file():
        raise InputError(f"{src}: labels missing from the validation set (detect needs boxes.json)")
    try:
        return json.loads(src.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{src}: not valid JSON ({e.msg} at line {e.lineno})") from None


def check_truth(folder: Path, files: list[Path], labels: tuple[str, ...]) -> None:
    table = _boxes(folder)
    missing = [r for r in (p.relative_to(folder).as_posix() for p in files) if r not in table]
    if missing:
        raise InputError(f"{folder / 'boxes.json'}: labels missing for {len(missing)} validation file(s), e.g. {missing[0]}")


def boxes_to_model(rows: list, geom: Geometry, labels: tuple[str, ...], where: str) -> np.ndarray:
    """Ground-truth boxes [x0, y0, x1, y1, label] in frame pixels -> model space, label as an index."""
    out = []
    for r in rows:
        if len(r) != 5:
            raise InputError(f"{where}: each box must be [x0, y0, x1, y1, label], got {r!r}")
        lab = r[4]
        li = labels.index(lab) if isinstance(lab, str) and lab in labels else int(lab) if str(lab).isdigit() else None
        if li is None:
            raise InputError(f"{where}: box label {lab!r} is not one of {list(labels)}")
        (mx0, my0), (mx1, my1) = geom.points_to_model(np.array([r[:2], r[2:4]], np.float64))
        out.append([mx0, my0, mx1, my1, li])
    return np.array(out, np.float32).reshape(-1, 5)


def read_truth(folder: Path, samples: list, labels: tuple[str, ...]) -> list[np.ndarray]:
    table = _boxes(folder)
    return [boxes_to_model(table[s.file], s.geometry, labels, f"{folder / 'boxes.json'}[{s.file}]") for s in samples]


def truth_from_prediction(task: Detect, pred: np.ndarray) -> np.ndarray:
    """FP32's own boxes (x0 y0 x1 y1 label) as the truth, for the agreement gate."""
    return pred[:, :5]
