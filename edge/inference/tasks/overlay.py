"""A small picture of a finding, for the review station: the frame with the finding outlined.

What may leave the device is decided by `edge.imaging.deid.exportable_pixels` (ultrasound is masked
outside its imaging region, and withheld without one, because its margins carry burned-in names), the
same rule that governs every other pixel that leaves.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import cv2
import numpy as np

from edge.imaging.deid import exportable_pixels, mask_outside_region

if TYPE_CHECKING:
    from edge.frames import Frame


def make_overlay(frame: Frame, mask: np.ndarray, max_side: int = 256) -> str | None:
    """PNG (base64) of the frame with ``mask`` outlined, at most ``max_side`` pixels; None when the frame
    may not leave the device."""
    pix = exportable_pixels(frame)
    if pix is None:
        return None
    if pix.dtype != np.uint8:
        pix = (np.clip(pix, 0, 1) * 255).astype(np.uint8)
    img = cv2.cvtColor(pix, cv2.COLOR_GRAY2BGR) if pix.ndim == 2 else cv2.cvtColor(pix, cv2.COLOR_RGB2BGR)
    cs, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, cs, -1, (0, 255, 255), 2)
    if frame.region is not None and frame.modality == "US":
        img = mask_outside_region(img, frame.region)  # an outline drawn across the border stays inside it
    s = max_side / max(img.shape[:2])
    if s < 1:
        img = cv2.resize(img, (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", img)
    return base64.b64encode(buf.tobytes()).decode("ascii") if ok else None
