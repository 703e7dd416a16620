"""Decode model outputs into per-frame detections.

Each task reads what it needs from the bundle manifest (labels, threshold, needs-review band, urgent
labels, ``postprocess`` options) so a re-exported model with a new threshold needs no device code change.
The result of one frame is a list of `Detection` in *frame* coordinates and physical units: the model's
letterbox/resize is undone with the frame's `Geometry`, and areas use the frame's pixel spacing, because
a clinician reads "312 mm²" and a contour on the image they see, never model pixels.

``postprocess`` keys understood (all optional):
  background_labels  labels that never produce a finding (default: background, normal, none, bg)
  min_area_mm2 / min_area_px   segmentation components smaller than this are noise (default 0 mm², 16 px)
  max_contour_points           polygon simplification budget per contour (default 64)
  max_regions                  contours reported per finding (default 5)
  box_format                   detection: xyxy | cxcywh (default xyxy); boxes_normalized: true if 0..1
  nms_iou                      detection NMS IoU (default 0.45); max_detections (default 50)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge.frames import Frame
from edge.inference.bundle import Manifest
from edge.inference.preprocess import Geometry

DEFAULT_BACKGROUND = ("background", "normal", "none", "bg", "negative")


@dataclass
class Detection:
    """One label's evidence in one frame, before temporal smoothing and before it becomes a Finding."""

    label: str
    confidence: float
    positive: bool  # confidence >= the manifest threshold
    needs_review: bool  # confidence inside the manifest's review band
    priority: str = "routine"
    measurements: dict[str, float] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)
    overlay_png_b64: str | None = None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class Task:
    """Base: shared threshold / review-band / priority rules."""

    def __init__(self, manifest: Manifest, overlays: bool = False) -> None:
        self.m = manifest
        pp = manifest.postprocess
        self.background = tuple(pp.get("background_labels", DEFAULT_BACKGROUND))
        self.threshold = float(manifest.threshold)
        self.band = manifest.review_band
        self.urgent = set(manifest.urgent_labels)
        self.overlays = overlays
        self.output_name = manifest.outputs[0].name if manifest.outputs else None
        self.activation = manifest.outputs[0].activation if manifest.outputs else "none"

    def judge(self, label: str, conf: float) -> tuple[bool, bool, str] | None:
        """(positive, needs_review, priority) for a confidence, or None when it is a clear negative.

        Below-threshold confidences inside the review band still produce a (low-priority, needs-review)
        detection: the band exists so that uncertain cases reach a human in both directions.
        """
        lo, hi = self.band
        positive = conf >= self.threshold
        review = lo <= conf <= hi
        if not positive and not review:
            return None
        prio = ("urgent" if label in self.urgent and not review else "routine") if positive else "low"
        return positive, review, prio

    def first_output(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        if self.output_name in outputs:
            return outputs[self.output_name]
        return next(iter(outputs.values()))

    def decode(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> list[Detection]:
        raise NotImplementedError


class Classify(Task):
    def decode(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> list[Detection]:
        y = np.asarray(self.first_output(outputs), np.float32).reshape(-1)
        labels = self.m.labels
        if self.activation == "sigmoid":
            p = _sigmoid(y)
        elif self.activation == "softmax":
            p = _softmax(y, 0)
        else:
            p = y
        if len(p) == 1 and len(labels) >= 1:  # single logit: probability of the (last) positive label
            pairs = [(labels[-1], float(p[0]))]
        else:
            pairs = list(zip(labels, (float(v) for v in p), strict=False))
        if self.activation == "softmax":  # mutually exclusive classes: only the winner can be a finding
            pairs = [max(pairs, key=lambda t: t[1])]
        out = []
        for label, conf in pairs:
            if label in self.background:
                continue
            conf = min(1.0, max(0.0, conf))
            j = self.judge(label, conf)
            if j is None:
                continue
            out.append(Detection(label, conf, j[0], j[1], j[2],
                                 measurements={"probability": round(conf, 4)}))
        return out


class Segment(Task):
    def __init__(self, manifest: Manifest, overlays: bool = False) -> None:
        super().__init__(manifest, overlays)
        pp = manifest.postprocess
        self.min_area_mm2 = float(pp.get("min_area_mm2", 0.0))
        self.min_area_px = int(pp.get("min_area_px", 16))
        self.max_points = int(pp.get("max_contour_points", 64))
        self.max_regions = int(pp.get("max_regions", 5))
        self.mask_threshold = float(pp.get("mask_threshold", self.threshold))

    def prob_maps(self, y: np.ndarray) -> list[tuple[str, np.ndarray]]:
        y = np.asarray(y, np.float32)
        while y.ndim > 3:
            y = y[0]
        if y.ndim == 2:
            y = y[None]
        labels = self.m.labels
        if self.activation == "softmax" and y.shape[0] > 1:
            y = _softmax(y, 0)
        elif self.activation == "sigmoid":
            y = _sigmoid(y)
        if y.shape[0] == 1:
            fg = [lb for lb in labels if lb not in self.background] or list(labels[-1:])
            return [(fg[0], y[0])]
        return [(labels[c], y[c]) for c in range(min(len(labels), y.shape[0])) if labels[c] not in self.background]

    def decode(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> list[Detection]:
        spacing = geom.model_spacing_mm(frame.spacing_mm)
        px_mm2 = spacing[0] * spacing[1] if spacing else None
        ch, cw = geom.content_size
        out = []
        for label, prob in self.prob_maps(self.first_output(outputs)):
            # Only the letterboxed content is image; the padding cannot hold a finding.
            content = prob[geom.pad_top: geom.pad_top + ch, geom.pad_left: geom.pad_left + cw]
            mask = (content >= self.mask_threshold).astype(np.uint8)
            n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            keep = []
            for i in range(1, n):
                a = int(stats[i, cv2.CC_STAT_AREA])
                if a < self.min_area_px or (px_mm2 is not None and a * px_mm2 < self.min_area_mm2):
                    continue
                keep.append((a, i))
            keep.sort(reverse=True)
            # Presence confidence: the strongest pixel of a kept region, or of the whole map when nothing
            # survived (so an almost-finding can still fall into the review band).
            if keep:
                conf = float(content[lab == keep[0][1]].max())
            else:
                conf = min(float(content.max()), self.mask_threshold - 1e-6) if content.size else 0.0
            conf = min(1.0, max(0.0, conf))
            j = self.judge(label, conf)
            if j is None:
                continue
            positive, review, prio = j
            if positive and not keep:
                positive, prio = False, "low"
            meas: dict[str, float] = {"regions": float(len(keep))}
            geometry: dict[str, Any] = {"frame_size": [frame.height, frame.width]}
            if keep:
                total_px = sum(a for a, _ in keep)
                largest_px = keep[0][0]
                frame_px = 1.0 / (geom.scale_x * geom.scale_y)
                meas["area_px"] = round(total_px * frame_px, 1)
                meas["largest_area_px"] = round(largest_px * frame_px, 1)
                if px_mm2 is not None:
                    meas["area_mm2"] = round(total_px * px_mm2, 2)
                    meas["largest_area_mm2"] = round(largest_px * px_mm2, 2)
                contours = []
                for _, i in keep[: self.max_regions]:
                    contours.append(self._contour(lab == i, geom))
                geometry["contours"] = contours
                x, y, w, h = (int(v) for v in stats[keep[0][1], :4])
                box = geom.points_to_frame(np.array([[x, y], [x + w, y + h]], np.float64) +
                                           np.array([geom.pad_left, geom.pad_top]))
                geometry["largest_box"] = np.round(box.reshape(-1), 1).tolist()
            det = Detection(label, conf, positive, review, prio, meas, geometry)
            if self.overlays and keep:
                full = np.zeros(geom.model_size, np.uint8)
                full[geom.pad_top: geom.pad_top + ch, geom.pad_left: geom.pad_left + cw] = mask
                det.overlay_png_b64 = make_overlay(frame, geom.mask_to_frame(full))
            out.append(det)
        return out

    def _contour(self, region: np.ndarray, geom: Geometry) -> list[list[float]]:
        cs, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not cs:
            return []
        c = max(cs, key=cv2.contourArea)
        eps = 0.5
        poly = cv2.approxPolyDP(c, eps, True)
        while len(poly) > self.max_points:
            eps *= 1.6
            poly = cv2.approxPolyDP(c, eps, True)
        pts = poly.reshape(-1, 2).astype(np.float64) + np.array([geom.pad_left, geom.pad_top])
        return np.round(geom.points_to_frame(pts), 1).tolist()


class Detect(Task):
    """Boxes + scores -> per-label detections after non-maximum suppression.

    Accepts either one output (1, N, 4 + C) or two outputs named in the manifest order: boxes (1, N, 4) and
    scores (1, N, C) or (1, N).
    """

    def __init__(self, manifest: Manifest, overlays: bool = False) -> None:
        super().__init__(manifest, overlays)
        pp = manifest.postprocess
        self.fmt = str(pp.get("box_format", "xyxy"))
        self.normalized = bool(pp.get("boxes_normalized", False))
        self.iou = float(pp.get("nms_iou", 0.45))
        self.max_det = int(pp.get("max_detections", 50))

    def split(self, outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        names = [o.name for o in self.m.outputs if o.name in outputs] or list(outputs)
        if len(names) >= 2:
            boxes = np.asarray(outputs[names[0]], np.float32).reshape(-1, 4)
            scores = np.asarray(outputs[names[1]], np.float32)
            scores = scores.reshape(boxes.shape[0], -1)
        else:
            y = np.asarray(outputs[names[0]], np.float32)
            y = y.reshape(-1, y.shape[-1])
            boxes, scores = y[:, :4], y[:, 4:]
        if self.activation == "sigmoid":
            scores = _sigmoid(scores)
        elif self.activation == "softmax":
            scores = _softmax(scores, 1)
        return boxes, scores

    def decode(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> list[Detection]:
        boxes, scores = self.split(outputs)
        if boxes.size == 0:
            return []
        if self.fmt == "cxcywh":
            cx, cy, w, h = boxes.T
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
        if self.normalized:
            mh, mw = geom.model_size
            boxes = boxes * np.array([mw, mh, mw, mh], np.float32)
        labels = self.m.labels
        if scores.shape[1] == 1 and len(labels) > 1:
            label_names = [lb for lb in labels if lb not in self.background][:1] or [labels[-1]]
        else:
            label_names = list(labels[: scores.shape[1]])
        lo = min(self.band[0], self.threshold)
        spacing = geom.model_spacing_mm(frame.spacing_mm)
        out = []
        for c, label in enumerate(label_names):
            if label in self.background:
                continue
            s = scores[:, c]
            idx = np.nonzero(s >= lo)[0]
            if idx.size == 0:
                continue
            b = boxes[idx]
            rects = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in b]
            kept = cv2.dnn.NMSBoxes(rects, s[idx].astype(float).tolist(), float(lo), self.iou)
            kept = sorted((int(k) for k in np.asarray(kept).reshape(-1)), key=lambda k: -s[idx[k]])[: self.max_det]
            if not kept:
                continue
            conf = float(min(1.0, max(0.0, s[idx[kept[0]]])))
            j = self.judge(label, conf)
            if j is None:
                continue
            frame_boxes = []
            for k in kept:
                x0, y0, x1, y1 = b[k]
                pts = geom.points_to_frame(np.array([[x0, y0], [x1, y1]], np.float64))
                frame_boxes.append([round(float(v), 1) for v in pts.reshape(-1)] + [round(float(s[idx[k]]), 4)])
            meas = {"count": float(sum(1 for k in kept if s[idx[k]] >= self.threshold))}
            if spacing:
                x0, y0, x1, y1 = b[kept[0]]
                meas["largest_box_w_mm"] = round(float(x1 - x0) * spacing[1], 2)
                meas["largest_box_h_mm"] = round(float(y1 - y0) * spacing[0], 2)
            det = Detection(label, conf, j[0], j[1], j[2], meas,
                            {"boxes": frame_boxes, "frame_size": [frame.height, frame.width]})
            if self.overlays:
                m = np.zeros((frame.height, frame.width), np.uint8)
                for fb in frame_boxes:
                    x0, y0, x1, y1 = (int(round(v)) for v in fb[:4])
                    cv2.rectangle(m, (x0, y0), (x1, y1), 1, 2)
                det.overlay_png_b64 = make_overlay(frame, m)
            out.append(det)
        return out


TASKS: dict[str, type[Task]] = {"classify": Classify, "segment": Segment, "detect": Detect}


def build_task(manifest: Manifest, overlays: bool = False) -> Task:
    return TASKS[manifest.task](manifest, overlays)


def make_overlay(frame: Frame, mask: np.ndarray, max_side: int = 256) -> str | None:
    """Small PNG of the frame with the finding outlined, everything outside the imaging region black.

    Ultrasound frames carry burned-in patient text in their margins, so without a known imaging region
    there is no overlay at all rather than one that might leak a name.
    """
    if frame.region is None:
        return None
    pix = frame.pixels
    if pix.dtype != np.uint8:
        pix = (np.clip(pix, 0, 1) * 255).astype(np.uint8)
    img = cv2.cvtColor(pix, cv2.COLOR_GRAY2BGR) if pix.ndim == 2 else cv2.cvtColor(pix, cv2.COLOR_RGB2BGR)
    keep = np.zeros(img.shape[:2], bool)
    r = frame.region
    keep[max(0, r.y0): r.y1, max(0, r.x0): r.x1] = True
    img[~keep] = 0
    cs, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, cs, -1, (0, 255, 255), 2)
    img[~keep] = 0
    s = max_side / max(img.shape[:2])
    if s < 1:
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", img)
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else None
