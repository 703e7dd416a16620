"""Temporal hysteresis for video: one finding per event, not one per frame.

A per-frame model on live ultrasound flickers: a free-fluid region visible for two seconds is detected
in most frames, missed in a few, and a speckle pattern fires once in an otherwise empty sweep. Sending
that raw would page a clinician sixty times per event and once for noise. So per label:

* the label turns **on** when at least ``on_frames`` of the last ``window`` frames are positive
  (tolerates a missed frame during onset without accepting an isolated blip);
* it turns **off** only after ``off_frames`` consecutive negative frames (bridges brief dropouts);
* exactly one `Event` is emitted, at the moment the label turns on, carrying the peak confidence and the
  frame range seen so far, and the detection at that peak (its measurements and geometry).

Emitting at confirmation, not at the end of the event, keeps capture-to-finding latency to a few frames,
which is what matters for an urgent finding.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from edge.inference.tasks import Detection


@dataclass
class Event:
    label: str
    first_frame: int
    confirm_frame: int
    peak: Detection  # the detection with the highest confidence up to confirmation (latest one on a tie)
    peak_frame: int = -1  # the frame the peak's measurements and geometry come from

    @property
    def confidence(self) -> float:
        return self.peak.confidence

    @property
    def frame_range(self) -> tuple[int, int]:
        return (self.first_frame, self.confirm_frame)


@dataclass
class _LabelState:
    window: deque = field(default_factory=deque)  # (frame_index, Detection | None) of the last frames
    active: bool = False
    neg_run: int = 0


class Hysteresis:
    """Per-stream smoother; keep one per live source or multi-frame object."""

    def __init__(self, on_frames: int = 3, off_frames: int = 5, window: int = 5) -> None:
        if on_frames < 1 or off_frames < 1:
            raise ValueError("on_frames and off_frames must be >= 1")
        self.on_frames = on_frames
        self.off_frames = off_frames
        self.window = max(window, on_frames)
        self._labels: dict[str, _LabelState] = {}
        self.events_emitted = 0

    def active_labels(self) -> list[str]:
        return [k for k, s in self._labels.items() if s.active]

    def update(self, frame_index: int, detections: list[Detection]) -> list[Event]:
        """Feed one frame's detections; returns the events confirmed by this frame (usually none)."""
        positives = {d.label: d for d in detections if d.positive}
        events = []
        for label in set(self._labels) | set(positives):
            st = self._labels.setdefault(label, _LabelState())
            det = positives.get(label)
            st.window.append((frame_index, det))
            while len(st.window) > self.window:
                st.window.popleft()
            if det is not None:
                st.neg_run = 0
            else:
                st.neg_run += 1
            if st.active:
                if st.neg_run >= self.off_frames:
                    st.active = False
                    st.window.clear()
                continue
            hits = [(i, d) for i, d in st.window if d is not None]
            if det is not None and len(hits) >= self.on_frames:
                st.active = True
                peak_i, peak = max(hits, key=lambda t: (t[1].confidence, t[0]))
                events.append(Event(label, hits[0][0], frame_index, peak, peak_i))
                self.events_emitted += 1
            if not st.active and not hits:
                del self._labels[label]
        return events
