"""The picture of a finding: the display frame with its evidence drawn on, label and confidence above it.

Tasks attach a `Picture` to each detection (cheap: model-space data and the frame, nothing drawn); only the
findings the profile's policy picks (`OverlayPolicy`: by default urgent and needs-review ones) are rendered,
after smoothing and the review reasons are known, so a 30 fps cine does not pay for pictures of frames that
never become a finding. Three kinds, one per task kind: segmentation contours over a tinted mask, detection
boxes with their scores, and a class-activation heatmap for classifiers whose bundle provides one.

What may leave the device is decided by `edge.imaging.deid.exportable_pixels` (ultrasound is masked outside
its imaging region, and withheld without one, because its margins carry burned-in names), the same rule
that governs every other pixel that leaves; drawings are clipped to the same region, and the caption is
drawn on a band added above the image, never over anatomy.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.config import OVERLAY_POLICIES
from edge.imaging.deid import exportable_pixels, mask_outside_region

if TYPE_CHECKING:
    from edge.frames import Frame
    from edge.inference.preprocess import Geometry

MAX_PNG_BYTES = 280_000  # the finding schema allows 400,000 base64 characters
COLOUR = {"routine": (0, 220, 255), "urgent": (0, 0, 255), "low": (200, 200, 200)}  # BGR
REVIEW_COLOUR = (255, 160, 0)


@dataclass(frozen=True)
class OverlayPolicy:
    """Which findings get a picture, and how large it may be (profile ``pipeline.overlays`` and
    ``pipeline.overlay_max_side``)."""

    when: str = "urgent-or-review"
    max_side: int = 384

    def __post_init__(self) -> None:
        if self.when not in OVERLAY_POLICIES:
            raise ValueError(f"overlay policy {self.when!r} is not one of {', '.join(OVERLAY_POLICIES)}")

    def wants(self, priority: str, needs_review: bool) -> bool:
        if self.when == "all":
            return True
        return self.when == "urgent-or-review" and (priority == "urgent" or needs_review)


@dataclass
class Picture:
    """What a detection's picture shows, in model space until rendered (`render`)."""

    frame: Frame
    geom: Geometry
    mask: np.ndarray | None = None  # model-space 0/1 (segment), full model size
    boxes: list[list[float]] = field(default_factory=list)  # frame pixels x0 y0 x1 y1 score (detect)
    heat: np.ndarray | None = None  # model-space 0..1 (classify, class-activation map), full model size


def display_bgr(pix: np.ndarray) -> np.ndarray:
    """Display pixels (uint8 or float 0..1, grey or RGB) as an 8-bit BGR image to draw on."""
    if pix.dtype != np.uint8:
        pix = (np.clip(pix, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(pix, cv2.COLOR_GRAY2BGR) if pix.ndim == 2 else cv2.cvtColor(pix, cv2.COLOR_RGB2BGR)


def draw(picture: Picture, label: str, confidence: float, priority: str = "routine",
         needs_review: bool = False) -> np.ndarray | None:
    """The rendered picture (BGR uint8, frame size plus a caption band), or None when the frame may not
    leave the device."""
    frame = picture.frame
    pix = exportable_pixels(frame)
    if pix is None:
        return None
    img = display_bgr(pix)
    colour = REVIEW_COLOUR if needs_review else COLOUR.get(priority, COLOUR["routine"])
    g = picture.geom
    if picture.heat is not None:
        heat = g.map_to_frame(picture.heat)
        coloured = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
        # the coldest third stays the bare image, hotter areas take colour: a uniform tint would hide anatomy
        alpha = (np.clip((heat - 0.33) / 0.67, 0, 1) * 0.6)[..., None]
        img = (img * (1 - alpha) + coloured * alpha).astype(np.uint8)
    if picture.mask is not None:
        m = g.mask_to_frame(picture.mask)
        tint = img.copy()
        tint[m > 0] = colour
        img = cv2.addWeighted(img, 0.7, tint, 0.3, 0)
        cs, _ = cv2.findContours((m > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, cs, -1, colour, max(1, round(max(img.shape[:2]) / 256)))
    thick = max(1, round(max(img.shape[:2]) / 200))
    for b in picture.boxes:
        x0, y0, x1, y1 = (int(round(v)) for v in b[:4])
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, thick)
        if len(b) > 4:
            cv2.putText(img, f"{b[4]:.2f}", (x0, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4 * thick, colour, max(1, thick // 2), cv2.LINE_AA)
    if frame.region is not None and frame.modality == "US":
        img = mask_outside_region(img, frame.region)  # a drawing across the border stays inside it
    return caption(img, f"{label} {confidence:.2f}" + ("  NEEDS REVIEW" if needs_review else "")
                   + ("  URGENT" if priority == "urgent" and not needs_review else ""), colour)


def caption(img: np.ndarray, text: str, colour: tuple[int, int, int]) -> np.ndarray:
    """``img`` with a black band on top holding ``text`` (scaled to the image width)."""
    scale = max(0.4, min(1.2, img.shape[1] / 640))
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    band = np.zeros((th + base + 10, img.shape[1], 3), np.uint8)
    cv2.putText(band, text, (6, th + 5), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
    return np.vstack([band, img])


def fit(img: np.ndarray, max_side: int) -> np.ndarray:
    s = max_side / max(img.shape[:2])
    if s >= 1:
        return img
    return cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))), interpolation=cv2.INTER_AREA)


def png_b64(img: np.ndarray, max_side: int) -> str | None:
    """PNG (base64) of ``img`` at most ``max_side`` pixels and `MAX_PNG_BYTES` bytes (halved until it fits)."""
    side = max_side
    while side >= 32:
        ok, buf = cv2.imencode(".png", fit(img, side))
        if ok and len(buf) <= MAX_PNG_BYTES:
            return base64.b64encode(buf.tobytes()).decode("ascii")
        side //= 2
    return None


def render(picture: Picture | None, det: Any, max_side: int) -> str | None:
    """A detection's overlay as base64 PNG, or None (no picture, or pixels that may not leave)."""
    if picture is None:
        return None
    img = draw(picture, det.label, det.confidence, det.priority, det.needs_review)
    return None if img is None else png_b64(img, max_side)
