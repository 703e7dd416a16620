"""What every task kind shares: the `Detection` it emits, activations, threshold / review-band / priority.

Each task reads what it needs from the bundle manifest (labels, threshold, needs-review band, urgent
labels, ``postprocess`` options) so a re-exported model with a new threshold needs no device code change.
A frame's result is a list of `Detection` in *frame* coordinates and physical units: the model's
letterbox/resize is undone with the frame's `Geometry`, and areas use the frame's pixel spacing, because
a clinician reads "312 mm²" and a contour on the image they see, never model pixels.

``postprocess`` keys: `POSTPROCESS_KEYS` below (export refuses any other; docs/MODEL_SPEC.md lists them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from edge.frames import Frame
    from edge.inference.preprocess import Geometry

DEFAULT_BACKGROUND = ("background", "normal", "none", "bg", "negative")


def background_set(postprocess: dict[str, Any]) -> frozenset[str]:
    """Labels that never produce a finding, compared without case: class folders are often named NORMAL."""
    return frozenset(str(x).casefold() for x in postprocess.get("background_labels", DEFAULT_BACKGROUND))


@dataclass(frozen=True)
class PostprocessKey:
    """One ``postprocess`` option of a bundle manifest: which task kinds read it, its default, its meaning."""

    name: str
    tasks: tuple[str, ...]
    default: Any
    doc: str


POSTPROCESS_KEYS: dict[str, PostprocessKey] = {k.name: k for k in (
    PostprocessKey("background_labels", ("classify", "segment", "detect"), list(DEFAULT_BACKGROUND),
                   "labels that never produce a finding, in any letter case (a model's 'normal' class is evidence "
                   "of absence, not a finding); give [] to report every label"),
    PostprocessKey("mask_threshold", ("segment",), "the spec's threshold", "per-pixel probability a region needs"),
    PostprocessKey("min_area_mm2", ("segment",), 0.0, "regions smaller than this (with the frame's pixel spacing) "
                   "are noise"),
    PostprocessKey("min_area_px", ("segment",), 16, "regions with fewer model-input pixels than this are noise"),
    PostprocessKey("max_contour_points", ("segment",), 64, "polygon points per reported contour at most"),
    PostprocessKey("max_regions", ("segment",), 5, "contours reported per finding at most (largest first)"),
    PostprocessKey("box_format", ("detect",), "xyxy", "how the model's boxes are written: xyxy or cxcywh"),
    PostprocessKey("boxes_normalized", ("detect",), False, "true if box coordinates are 0..1 of the input size"),
    PostprocessKey("nms_iou", ("detect",), 0.45,
                   "a box overlapping a stronger box of its label by more than this IoU is dropped (NMS)"),
    PostprocessKey("max_detections", ("detect",), 50, "boxes kept per frame at most"),
)}


@dataclass(frozen=True)
class Output:
    name: str
    activation: str = "none"  # sigmoid | softmax | none (already probabilities)


@dataclass(frozen=True)
class TaskConfig:
    """The slice of a manifest (or, during export, of the model spec) that turns outputs into decisions."""

    task: str
    labels: tuple[str, ...]
    outputs: tuple[Output, ...] = ()
    threshold: float = 0.5
    review_band: tuple[float, float] = (0.4, 0.6)
    urgent_labels: tuple[str, ...] = ()
    postprocess: dict[str, Any] = field(default_factory=dict)
    explanation_output: str | None = None  # a classifier's class-activation map (1, K, h, w), if the bundle has one


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
    review_reasons: tuple[str, ...] = ()  # why needs_review is set (the pipeline fills it in)
    # what an overlay would show (`edge.inference.tasks.overlay.Picture`); rendered only for findings the
    # profile's overlay policy picks, never serialized
    picture: Any = field(default=None, repr=False, compare=False)


def apply_activation(x: np.ndarray, activation: str, axis: int) -> np.ndarray:
    """The manifest's output activation. A softmax over a single channel is identically 1, so such an
    output is read as already holding probabilities (as a 1-channel "none")."""
    if activation == "sigmoid":
        with np.errstate(over="ignore"):  # exp(-x) -> inf for a very negative logit gives exactly 0: correct
            return 1.0 / (1.0 + np.exp(-x))
    if activation == "softmax" and x.shape[axis] > 1:
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    return x


class Task:
    """Base: shared threshold / review-band / priority rules.

    ``model_space(outputs, geom)`` turns raw outputs into the kind's decisions in model coordinates; the
    device's ``decode`` and the export gate both start from it.
    """

    def __init__(self, config: TaskConfig | Any, overlays: bool = False) -> None:
        """``config``: a `TaskConfig`, or anything with ``task_config()`` (a bundle's `Manifest`)."""
        manifest = self.m = config if isinstance(config, TaskConfig) else config.task_config()
        pp = manifest.postprocess
        self.labels = tuple(manifest.labels)
        self.background = background_set(pp)
        self.threshold = float(manifest.threshold)
        self.band = manifest.review_band
        self.urgent = set(manifest.urgent_labels)
        self.overlays = overlays
        self.output_name = manifest.outputs[0].name if manifest.outputs else None
        self.activation = manifest.outputs[0].activation if manifest.outputs else "none"

    def is_background(self, label: str) -> bool:
        return label.casefold() in self.background

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

    def model_space(self, outputs: dict[str, np.ndarray], geom: Geometry) -> Any:
        raise NotImplementedError

    def decode(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> list[Detection]:
        raise NotImplementedError

    def peak_scores(self, outputs: dict[str, np.ndarray], geom: Geometry, frame: Frame) -> dict[str, float]:
        """Each reportable label's confidence in this frame, finding or not: `medge replay` shows how close a
        clip came to the threshold, so "no findings" can be told apart from "nearly"."""
        raise NotImplementedError


def clip01(v: float) -> float:
    return min(1.0, max(0.0, float(v)))
