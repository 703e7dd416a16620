"""The unit of work between sources and the pipeline.

A `Frame` is display-space pixels plus what later stages need to turn model output into a measurement
(physical spacing), to route it (modality, study ids) and to time it (capture clock). Sources produce
frames; preprocessing, tasks and findings only ever read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StudyRef:
    """DICOM identity of the image a frame came from.

    These are the *original* identifiers and never leave the device readable: `edge.imaging.deid` turns them
    into keyed pseudonyms before a finding is written to the outbox, and `edge.imaging.relink` seals them to
    the hospital's key (only the hospital can open them).
    """

    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    sop_class_uid: str | None = None  # what a hospital's SR names as its evidence


@dataclass(frozen=True)
class Region:
    """A rectangle in frame pixel coordinates (x0, y0 inclusive; x1, y1 exclusive).

    Used for the ultrasound imaging region: anything outside it may hold burned-in patient text.
    """

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True)
class Acquisition:
    """What the object says about how it was acquired, for the models' intended-use checks. Like
    `StudyRef` it stays on the device (a patient's age is not sent anywhere)."""

    body_part: str | None = None  # BodyPartExamined
    view: str | None = None  # ViewPosition
    photometric: str | None = None  # PhotometricInterpretation as stored (before the display chain)
    patient_age_years: float | None = None  # PatientAge
    manufacturer: str | None = None


@dataclass
class Frame:
    """Display-space image plus context.

    ``pixels`` is HxW (grayscale) or HxWx3 (RGB, not BGR), either ``uint8`` (0-255) or ``float32`` in
    [0, 1], after every DICOM LUT (modality, VOI/window, MONOCHROME1 inversion, palette) has been applied:
    what a radiologist would see on screen. Preprocessing starts from here, so export calibration and
    the device see identical values.
    """

    pixels: np.ndarray
    modality: str
    source: str
    index: int = 0
    spacing_mm: tuple[float, float] | None = None  # (row spacing, column spacing) in millimetres
    frame_rate: float | None = None  # frames per second of the originating stream, if known
    captured_at: float = field(default_factory=time.monotonic)  # monotonic clock, for latency
    acquired_at: float = field(default_factory=time.time)  # wall clock (epoch seconds)
    study: StudyRef | None = None
    region: Region | None = None  # ultrasound imaging region, if known
    live: bool = False  # live video: latest-frame-wins; otherwise the frame must never be dropped
    origin: Path | None = None  # file the frame was read from, if any
    frame_count: int | None = None  # frames in the originating object/stream, if known
    acquisition: Acquisition | None = None  # DICOM acquisition attributes, if any

    def __post_init__(self) -> None:
        p = self.pixels
        if p.ndim not in (2, 3) or (p.ndim == 3 and p.shape[2] != 3):
            raise ValueError(f"frame pixels must be HxW or HxWx3, got shape {p.shape}")
        if p.dtype not in (np.uint8, np.float32):
            raise ValueError(f"frame pixels must be uint8 or float32, got {p.dtype}")

    @property
    def streaming(self) -> bool:
        """Part of a stream of alike frames (live video, a cine), not a single stored image."""
        return self.live or (self.frame_count or 1) > 1

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])
