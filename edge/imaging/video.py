"""Video files and streams -> RGB frames: the one reader behind live video, replay, `medge inspect` and
export's calibration/validation readers, so a clip gives the same pixels wherever it is read.

OpenCV decodes; frames come out RGB (uint8), grey stays grey, BGRA loses its alpha. A recorded frame
rate is reported only when it is plausible (0 < fps <= 1000): capture backends report 0, NaN or 90000
for streams that do not know.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import InputError


def capture_fps(cap: Any) -> float | None:
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    return fps if math.isfinite(fps) and 0.0 < fps <= 1000.0 else None


def to_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class VideoInfo:
    frames: int | None  # as the container declares it (None: unknown)
    rows: int | None
    columns: int | None
    frame_rate: float | None
    readable: bool  # the first frame decodes


def frame_count(cap: cv2.VideoCapture) -> int | None:
    """The container's frame count, or None: streams, still images and some codecs report 0 or a negative
    sentinel (-2**63), which is "unknown", not a count."""
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    return n if n > 0 else None


def probe(path: Path | str) -> VideoInfo | None:
    """What a video file holds, from its first frame; None when OpenCV cannot open it at all."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        ok, img = cap.read()
        return VideoInfo(frames=frame_count(cap),
                         rows=int(img.shape[0]) if ok else None, columns=int(img.shape[1]) if ok else None,
                         frame_rate=capture_fps(cap), readable=bool(ok and img is not None))
    finally:
        cap.release()


def read_video(path: Path | str, step: int = 1) -> Iterator[tuple[int, np.ndarray, VideoInfo]]:
    """(index, RGB pixels, info) of every ``step``-th frame of a finite video file; `InputError` naming
    the file when it cannot be opened or holds no readable frame."""
    path = Path(path)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise InputError(f"{path}: cannot open as a video (OpenCV could not read it)")
    try:
        info = VideoInfo(frames=frame_count(cap), rows=None, columns=None,
                         frame_rate=capture_fps(cap), readable=True)
        i = n = 0
        while True:
            ok, img = cap.read()
            if not ok or img is None:
                break
            if i % max(1, step) == 0:
                n += 1
                yield i, to_rgb(img), info
            i += 1
        if n == 0:
            raise InputError(f"{path}: video has no readable frames")
    finally:
        cap.release()
