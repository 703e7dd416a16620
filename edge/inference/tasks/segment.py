"""Segmentation: per-label probability maps, thresholded per label, connected components above a
minimum area; measured in mm² with the frame's spacing, outlined as contours in frame coordinates."""

from __future__ import annotations

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
class LabelRegions:
    """Model-space result for one label, inside the letterboxed content (the padding is not image)."""

    label: str
    prob: np.ndarray  # content-sized probability map
    components: np.ndarray  # content-sized connected-component labels of prob >= mask threshold
    stats: np.ndarray  # cv2 component statistics
    kept: list[tuple[int, int]]  # (area px, component) above the minimum area, largest first
    confidence: float  # strongest pixel of the largest kept region (else of the map, below the threshold)

    def mask(self, k: int | None = None) -> np.ndarray:
        """Content-sized mask of the kept components (or of the first ``k``)."""
        idx = [i for _, i in self.kept[:k]]
        return np.isin(self.components, idx) if idx else np.zeros(self.components.shape, bool)


class Segment(Task):
    def __init__(self, config: TaskConfig | Any, overlays: bool = False) -> None:
        super().__init__(config, overlays)
        pp = self.m.postprocess
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
        y = apply_activation(y, self.activation, 0)
        labels = self.labels
        if y.shape[0] == 1:
            fg = [lb for lb in labels if not self.is_background(lb)] or list(labels[-1:])
            return [(fg[0], y[0])]
        return [(labels[c], y[c]) for c in range(min(len(labels), y.shape[0])) if not self.is_background(labels[c])]

    def model_space(self, outputs: dict[str, np.ndarray], geom: Geometry,
                    spacing_mm: tuple[float, float] | None = None) -> list[LabelRegions]:
        spacing = geom.model_spacing_mm(spacing_mm)
        px_mm2 = spacing[0] * spacing[1] if spacing else None
        out = []
        for label, prob in self.prob_maps(self.first_output(outputs)):
            content = geom.content(prob)
            mask = (content >= self.mask_threshold).astype(np.uint8)
            n, comp, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
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
                conf = float(content[comp == keep[0][1]].max())
            else:
                conf = min(float(content.max()), self.mask_threshold - 1e-6) if content.size else 0.0
            out.append(LabelRegions(label, content, comp, stats, keep, clip01(conf)))
        return out

    def decode(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> list[Detection]:
        spacing = geom.model_spacing_mm(frame.spacing_mm)
        px_mm2 = spacing[0] * spacing[1] if spacing else None
        out = []
        for r in self.model_space(outputs, geom, frame.spacing_mm):
            j = self.judge(r.label, r.confidence)
            if j is None:
                continue
            positive, review, prio = j
            keep = r.kept
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
                geometry["contours"] = [self._contour(r.components == i, geom) for _, i in keep[: self.max_regions]]
                x, y, w, h = (int(v) for v in r.stats[keep[0][1], :4])
                box = geom.points_to_frame(np.array([[x, y], [x + w, y + h]], np.float64) +
                                           np.array([geom.pad_left, geom.pad_top]))
                geometry["largest_box"] = np.round(box.reshape(-1), 1).tolist()
            det = Detection(r.label, r.confidence, positive, review, prio, meas, geometry)
            if self.overlays and keep:
                kept = np.isin(r.components, [i for _, i in keep[: self.max_regions]]).astype(np.uint8)
                det.picture = Picture(frame, geom, mask=geom.content_to_model(kept))
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

    def peak_scores(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> dict[str, float]:
        return {r.label: r.confidence for r in self.model_space(outputs, geom, frame.spacing_mm)}


TASK = Segment


# ------------------------------------------------------------------------------ the accuracy gate's side


def gate_prediction(task: Segment, outputs: dict[str, np.ndarray], geom: Geometry,
                    spacing_mm: tuple[float, float] | None = None) -> np.ndarray:
    """Model-space mask of what the device reports as positive findings: the kept regions of every label
    whose detection is positive."""
    mask = np.zeros(geom.content_size, bool)
    for r in task.model_space(outputs, geom, spacing_mm):
        j = task.judge(r.label, r.confidence)
        if j is not None and j[0] and r.kept:
            mask |= r.mask()
    return geom.content_to_model(mask)


def decision(task: Segment, pred: np.ndarray) -> bool:
    return bool(pred.any())


def score(truth: list[np.ndarray], preds: list[np.ndarray], task: Segment) -> dict[str, float | None]:
    return M.segmentation(truth, preds)


def _mask_file(folder: Path, name: str) -> Path:
    mdir = folder / "masks"
    mp = mdir / (name + ".png")
    return mp if mp.is_file() else mdir / (Path(name).stem + ".png")


def check_truth(folder: Path, files: list[Path], labels: tuple[str, ...]) -> None:
    rel = [p.relative_to(folder).as_posix() for p in files]
    missing = [r for r in rel if not _mask_file(folder, r).is_file()]
    if missing:
        raise InputError(f"{folder / 'masks'}: labels missing from the validation set: no mask for {len(missing)} "
                         f"file(s), e.g. masks/{missing[0]}.png")


def read_truth(folder: Path, samples: list, labels: tuple[str, ...]) -> list[np.ndarray]:
    out = []
    for s in samples:
        mp = _mask_file(folder, s.file)
        m = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise InputError(f"{mp}: unreadable mask image")
        try:
            out.append(s.geometry.mask_to_model(m > 0))
        except ValueError as e:
            raise InputError(f"{mp}: {e}") from None
    return out


def truth_from_prediction(task: Segment, pred: np.ndarray) -> np.ndarray:
    """FP32's own mask as the truth, for the agreement gate (no labelled validation set)."""
    return pred
