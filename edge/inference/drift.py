"""Drift and out-of-distribution monitoring of one model on one source, against its bundle's reference.

Two questions, two horizons:

* **this frame** (out of distribution): its intensity histogram against the reference. Above the bundle's
  ``ood_psi`` the frame is unlike anything the model was calibrated on; its findings still go out (a
  missed finding is worse) but marked ``needs_review`` with the reason.
* **the recent frames** (drift): the pooled histogram of a rolling window against the reference. A gain
  turned up, a new probe, another vendor's processing move the whole window. Above the threshold for
  ``persist_frames`` frames in a row the monitor raises one drift event; it clears when the window falls
  below half that, and only then can the next event be raised. So a persistent shift yields one event,
  not one per frame. The threshold depends on what the window holds: frames of one stream (live video,
  a cine) are one patient, alike, and differ from the population about as much as a single input does
  (``drift_psi_stream``); separate objects (radiographs) pool many patients (``drift_psi``).

The output side (the distribution of the model's confidence against the validation set's) is reported
beside it but raises nothing: a run of positive patients legitimately moves it.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.inference.reference import CONFIDENCE_EDGES, ReferenceStats, histogram, proportions, psi


@dataclass(frozen=True)
class MonitorSettings:
    window_frames: int = 100
    min_frames: int = 30  # no drift verdict on fewer frames than this
    persist_frames: int = 10
    drift_psi: float | None = None  # None: the bundle's reference.drift_psi
    ood_psi: float | None = None  # None: the bundle's reference.ood_psi
    ood_review: bool = True  # findings from out-of-distribution frames get needs_review


@dataclass(frozen=True)
class FrameCheck:
    psi: float
    ood: bool
    change: str | None = None  # "raised" | "cleared" when this frame changed the drift state
    window_psi: float | None = None
    frames: int = 0  # frames the monitor had seen, this one included
    limit: float = 0.0  # the window threshold this frame was judged by
    ood_frames: int = 0

    def reason(self, limit: float) -> str:
        return f"out of distribution: input intensity PSI {self.psi:.2f} above {limit:.2f} against the model's reference"


class DriftMonitor:
    """Thread-safe: inputs are observed in the preprocessing stage, confidences in post-processing."""

    def __init__(self, reference: ReferenceStats, settings: MonitorSettings | None = None) -> None:
        self.ref = reference
        self.s = settings or MonitorSettings()
        self.drift_psi = self.s.drift_psi or reference.drift_psi
        self.drift_psi_stream = self.s.drift_psi or reference.drift_psi_stream
        self.threshold = self.drift_psi  # the one the latest frame was judged by
        self.ood_psi = self.s.ood_psi or reference.ood_psi
        self._lock = threading.Lock()
        self._hists: deque[np.ndarray] = deque()
        self._sum = np.zeros(len(reference.intensity))
        self._conf: deque[float] = deque(maxlen=self.s.window_frames)
        self.frames = 0
        self.ood_frames = 0
        self.state = "ok"
        self.events = 0
        self._above = 0
        self._below = 0
        self.window_psi: float | None = None
        self.peak_window_psi = 0.0
        self._pending: FrameCheck | None = None  # a raise/clear not yet reported (see take_change)

    def observe(self, tensor: np.ndarray, streaming: bool = False) -> FrameCheck:
        """``streaming``: the frame is part of a stream (live video or a multi-frame object)."""
        frame_psi, counts = self.ref.frame_psi(tensor)
        with self._lock:
            self.frames += 1
            ood = frame_psi > self.ood_psi
            self.ood_frames += int(ood)
            self._hists.append(counts)
            self._sum += counts
            if len(self._hists) > self.s.window_frames:
                self._sum -= self._hists.popleft()
            change = None
            if len(self._hists) >= self.s.min_frames:
                w = psi(self.ref.intensity, proportions(self._sum))
                self.window_psi = w
                self.peak_window_psi = max(self.peak_window_psi, w)
                limit = self.threshold = self.drift_psi_stream if streaming else self.drift_psi
                self._above = self._above + 1 if w > limit else 0
                self._below = self._below + 1 if w < limit / 2 else 0
                if self.state == "ok" and self._above >= self.s.persist_frames:
                    self.state, change = "drift", "raised"
                    self.events += 1
                elif self.state == "drift" and self._below >= self.s.persist_frames:
                    self.state, change = "ok", "cleared"
            chk = FrameCheck(frame_psi, ood, change, self.window_psi, self.frames, self.threshold, self.ood_frames)
            if change is not None:
                self._pending = chk
            return chk

    def take_change(self) -> FrameCheck | None:
        """The latest raise or clear not yet reported. It is held here, not on the frame, because the frame
        may be dropped (live video) or fail before it reaches the post stage; `put_back` if reporting fails."""
        with self._lock:
            chk, self._pending = self._pending, None
            return chk

    def put_back(self, chk: FrameCheck) -> None:
        with self._lock:
            if self._pending is None:
                self._pending = chk

    def observe_confidence(self, confidence: float) -> None:
        with self._lock:
            self._conf.append(float(confidence))

    def confidence_psi(self) -> float | None:
        with self._lock:
            conf = list(self._conf)
        if not self.ref.confidence or len(conf) < self.s.min_frames:
            return None
        return psi(self.ref.confidence, proportions(histogram(np.array(conf), CONFIDENCE_EDGES)))

    def snapshot(self) -> dict[str, Any]:
        """What the heartbeat, the metrics file and `medge monitor` show (with both distributions)."""
        conf_psi = self.confidence_psi()
        with self._lock:
            recent = proportions(self._sum) if self._hists else None
            conf = list(self._conf)
            return {
                "state": self.state, "frames": self.frames, "window": len(self._hists),
                "intensity_psi": None if self.window_psi is None else round(self.window_psi, 4),
                "peak_intensity_psi": round(self.peak_window_psi, 4), "drift_psi": self.threshold,
                "ood_frames": self.ood_frames, "ood_psi": self.ood_psi, "drift_events": self.events,
                "confidence_psi": None if conf_psi is None else round(conf_psi, 4),
                "reference": {"intensity_edges": list(self.ref.intensity_edges), "intensity": list(self.ref.intensity),
                              "confidence": list(self.ref.confidence), "confidence_from": self.ref.confidence_from},
                "recent": {"intensity": None if recent is None else [round(float(x), 6) for x in recent],
                           "confidence": [round(float(x), 6) for x in
                                          proportions(histogram(np.array(conf), CONFIDENCE_EDGES))] if conf else None},
            }
