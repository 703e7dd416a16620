"""Pictures from the command line: one PNG per finding, and an annotated copy of a cine or video.

`medge replay --overlays DIR` and `medge demo` write the overlay each finding carries (the same picture the
hospital receives, drawn by `edge.inference.tasks.overlay`); `medge replay --video OUT.mp4` draws every
read frame's detections, finding or not, so a reviewer can watch where a model looked through a clip.
Both obey the device's pixel rule (`edge.imaging.deid.exportable_pixels`): an ultrasound frame without a
known imaging region is not written, because its margins may carry the patient's name.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import cv2

from edge.durable_files import write_atomic
from edge.errors import InputError
from edge.findings import Finding
from edge.frames import Frame
from edge.imaging.deid import exportable_pixels
from edge.inference.tasks import Detection
from edge.inference.tasks.overlay import caption, display_bgr, draw


def overlay_name(f: Finding) -> str:
    frame = f"f{f.frame_range[0]}-{f.frame_range[1]}" if f.frame_range else f"f{f.frame_index or 0}"
    src = "".join(c if c.isalnum() or c in "-_." else "_" for c in (f.source or "input"))
    return f"{src}_{f.label}_{frame}_{f.finding_id[:8]}.png"


class OverlayFiles:
    """Writes each finding's overlay PNG (atomically) into one folder; remembers what it wrote."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: list[Path] = []
        self.without: list[str] = []  # findings that carry no picture, and why
        self._lock = threading.Lock()

    def add(self, f: Finding, new: bool = True) -> None:
        with self._lock:
            if not f.overlay_png_b64:
                self.without.append(f.finding_id)
                return
            path = self.folder / overlay_name(f)
            write_atomic(path, base64.b64decode(f.overlay_png_b64))
            self.written.append(path)

    def line(self) -> str:
        if not self.written and not self.without:
            return f"overlays: no findings, nothing written to {self.folder}"
        s = f"overlays: {len(self.written)} PNG(s) in {self.folder}"
        if self.without:
            s += (f"; {len(self.without)} finding(s) without a picture (pixels that may not leave the device, e.g. "
                  "ultrasound without a known imaging region)")
        return s


class AnnotatedVideo:
    """Every read frame with its detections drawn, as an MP4 at the source's frame rate."""

    def __init__(self, path: Path, fps: float | None = None) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".avi"):
            raise InputError(f"{self.path}: --video writes .mp4 (or .avi)")
        self.fps = fps
        self.frames = 0
        self.withheld = 0
        self._writer: cv2.VideoWriter | None = None
        self._tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._size: tuple[int, int] | None = None

    def add(self, frame: Frame, dets: list[Detection]) -> None:
        drawn = [d for d in dets if d.picture is not None]
        d = max(drawn, key=lambda d: d.confidence) if drawn else None  # the strongest label of the frame
        img = draw(d.picture, d.label, d.confidence, d.priority, d.needs_review) if d is not None else None
        if img is None:
            pix = exportable_pixels(frame)
            if pix is None:
                self.withheld += 1
                return
            img = caption(display_bgr(pix), f"frame {frame.index}: no detection", (200, 200, 200))
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix.lower() == ".mp4" else "MJPG"))
            self._size = (img.shape[1], img.shape[0])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, float(self.fps or frame.frame_rate or 25.0), self._size)
            if not self._writer.isOpened():
                raise InputError(f"{self.path}: OpenCV cannot write this video format here")
        if (img.shape[1], img.shape[0]) != self._size:
            img = cv2.resize(img, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(img)
        self.frames += 1

    def close(self) -> str:
        if self._writer is None:
            return (f"video: nothing written ({self.withheld} frame(s) may not leave the device: ultrasound without a "
                    "known imaging region)" if self.withheld else "video: no frame was read")
        self._writer.release()
        self._tmp.replace(self.path)  # the finished file appears whole, never a half-written one
        return f"video: {self.frames} annotated frame(s) in {self.path}"
