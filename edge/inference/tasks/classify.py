"""Classification: one probability per label, thresholded; a softmax head yields only its winner."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge.errors import InputError
from edge.inference import metrics as M
from edge.inference.tasks.base import Detection, Task, apply_activation, clip01
from edge.inference.tasks.overlay import Picture

if TYPE_CHECKING:
    from edge.frames import Frame
    from edge.inference.preprocess import Geometry

NEGATIVE_NAMES = ("0", "negative", "normal", "none", "background", "bg", "false", "no")


@dataclass(frozen=True)
class ClassScores:
    """Model-space result: a probability for each label (after the manifest's activation, 0..1)."""

    labels: tuple[str, ...]
    probs: np.ndarray
    candidates: tuple[tuple[str, float], ...]  # what can become a finding: non-background, softmax winner only


class Classify(Task):
    def model_space(self, outputs: dict[str, np.ndarray], geom: Geometry | None = None) -> ClassScores:
        y = np.asarray(self.first_output(outputs), np.float32).reshape(-1)
        p = np.clip(apply_activation(y, self.activation, 0), 0.0, 1.0)
        labels = self.labels
        # a single logit is the probability of the (last) positive label
        names = (labels[-1],) if len(p) == 1 and len(labels) >= 1 else tuple(labels[: len(p)])
        pairs = [(n, clip01(v)) for n, v in zip(names, p, strict=False)]
        if self.activation == "softmax" and len(pairs) > 1:  # mutually exclusive classes: only the winner
            pairs = [max(pairs, key=lambda t: t[1])]
        return ClassScores(names, p[: len(names)], tuple((n, c) for n, c in pairs if not self.is_background(n)))

    def decode(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> list[Detection]:
        out = []
        r = self.model_space(outputs, geom)
        cam = outputs.get(self.m.explanation_output) if self.m.explanation_output else None
        for label, conf in r.candidates:
            j = self.judge(label, conf)
            if j is None:
                continue
            det = Detection(label, conf, j[0], j[1], j[2], measurements={"probability": round(conf, 4)})
            if cam is not None:
                heat = self.heatmap(cam, r.labels.index(label), geom)
                peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
                (x, y), = geom.points_to_frame(np.array([[peak[1] + 0.5, peak[0] + 0.5]]))
                det.geometry = {"heatmap_peak": [round(float(x), 1), round(float(y), 1)],
                                "frame_size": [frame.height, frame.width]}
                if self.overlays:
                    det.picture = Picture(frame, geom, heat=heat)
            out.append(det)
        return out

    def heatmap(self, cam: np.ndarray, channel: int, geom: Geometry) -> np.ndarray:
        """The class-activation map of one label as a model-space 0..1 map: min-max scaled within the image
        content (letterbox padding excluded), as CAMs are shown, bilinearly upsampled to the model input."""
        c = np.asarray(cam, np.float32)[0, min(channel, cam.shape[1] - 1)]
        mh, mw = geom.model_size
        up = cv2.resize(c, (mw, mh), interpolation=cv2.INTER_LINEAR)
        content = geom.content(up)
        lo, hi = float(content.min()), float(content.max())
        heat = np.clip((up - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(up)
        return geom.content_to_model(geom.content(heat))

    def peak_scores(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> dict[str, float]:
        r = self.model_space(outputs, geom)
        return {n: clip01(v) for n, v in zip(r.labels, r.probs, strict=False) if not self.is_background(n)}


TASK = Classify


# ------------------------------------------------------------------------------ the accuracy gate's side


def gate_prediction(task: Classify, outputs: dict[str, np.ndarray], geom: Geometry,
                    spacing_mm: tuple[float, float] | None = None) -> ClassScores:
    return task.model_space(outputs, geom)


def decision(task: Classify, pred: ClassScores) -> bool:
    """The device files a positive finding for this sample."""
    return any(c >= task.threshold for _, c in pred.candidates)


def score(truth: list[int], preds: list[ClassScores], task: Classify) -> dict[str, float | None]:
    """AUROC, sensitivity, specificity, accuracy: binary on the positive label's probability, else the mean
    of one-vs-rest per label."""
    y = np.asarray(truth)
    arr = np.stack([p.probs for p in preds])
    if arr.shape[1] in (1, 2):
        return M.classification(y, arr[:, -1], task.threshold)
    per = [M.classification(y == k, arr[:, k], task.threshold) for k in range(arr.shape[1])]
    return {k: M.mean([p[k] for p in per]) for k in per[0]}


def label_index(raw: str, labels: tuple[str, ...], where: str) -> int:
    raw = raw.strip()
    if len(labels) <= 1 or (len(labels) == 2 and labels[0].lower() in NEGATIVE_NAMES):
        if raw in ("0", "1"):
            return int(raw)
        if raw in labels:
            return 1 if raw == labels[-1] else 0
        if raw.lower() in NEGATIVE_NAMES:
            return 0
        raise InputError(f"{where}: label {raw!r} is neither 0/1 nor one of the model's labels {list(labels)}")
    if raw.isdigit() and int(raw) < len(labels):
        return int(raw)
    if raw in labels:
        return labels.index(raw)
    raise InputError(f"{where}: label {raw!r} is not one of the model's labels {list(labels)}")


def _table(folder: Path, files: list[Path], labels: tuple[str, ...]) -> dict[str, int]:
    """File (path inside the folder) -> class index, from labels.csv or else from class folders."""
    src = folder / "labels.csv"
    if not src.is_file():
        in_class = [p for p in files if p.parent != folder]
        if not in_class:
            raise InputError(f"{src}: labels missing from the validation set (classify needs labels.csv with "
                             "file,label, or one folder per class: <val>/<label>/<image>)")
        top = [p.name for p in files if p.parent == folder]
        if top:
            raise InputError(f"{folder}: {len(top)} file(s) outside the class folders (e.g. {top[0]}) and no labels.csv; "
                             "move them into a class folder")
        return {p.relative_to(folder).as_posix(): label_index(p.parent.name, labels, f"{folder}/{p.parent.name}/ "
                                                              "(class folder)") for p in files}
    table: dict[str, int] = {}
    with open(src, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or (i == 0 and row[0].strip().lower() == "file"):
                continue
            if len(row) < 2:
                raise InputError(f"{src}:{i + 1}: expected 'file,label'")
            table[row[0].strip()] = label_index(row[1], labels, f"{src}:{i + 1}")
    return table


def check_truth(folder: Path, files: list[Path], labels: tuple[str, ...]) -> None:
    table = _table(folder, files, labels)
    missing = [r for r in (p.relative_to(folder).as_posix() for p in files) if r not in table]
    if missing:
        raise InputError(f"{folder / 'labels.csv'}: labels missing for {len(missing)} validation file(s), e.g. {missing[0]}")


def read_truth(folder: Path, samples: list, labels: tuple[str, ...]) -> list[int]:
    files = sorted({folder / s.file for s in samples})
    table = _table(folder, files, labels)
    return [table[s.file] for s in samples]


def truth_from_prediction(task: Classify, pred: ClassScores) -> int:
    """FP32's own decision as the label, for the agreement gate (no labelled validation set)."""
    if len(pred.probs) <= 2:
        return int(pred.probs[-1] >= task.threshold)
    return int(np.argmax(pred.probs))
