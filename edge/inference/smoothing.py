"""Temporal hysteresis for video: one finding per event, not one per frame.

A per-frame model on live ultrasound flickers: a free-fluid region visible for two seconds is detected
in most frames, missed in a few, and a speckle pattern fires once in an otherwise empty sweep. Sending
that raw would page a clinician sixty times per event and once for noise. So per label:

* the label turns **on** when at least ``on_frames`` of the last ``window`` frames are positive
  (tolerates a missed frame during onset without accepting an isolated blip);
* it turns **off** only after ``off_frames`` consecutive negative frames (bridges brief dropouts);
* exactly one `Event` is emitted per episode, carrying the peak confidence, the frames the episode covers,
  and the measurements and geometry of its largest extent (the frame with the largest area, for a
  segmentation: the pocket at its biggest is what a clinician measures; for other kinds, the peak frame).

When it is emitted depends on what the frames are (``emit``):

* ``"episode"`` (a recorded object: a multi-frame DICOM, or a file played by the replay source; a
  ``video`` source is live even when it reads a file) - when the episode ends, or when the object does
  (`flush`: its last frame, the next object starting, the source ending), so the finding describes the
  whole episode: first to last positive frame, and the peak over all of it. The clip is already
  recorded, so waiting costs no clinical time.
* ``"onset"`` (a live stream) - at confirmation, a few frames after onset, because capture-to-finding
  latency is what matters for an urgent finding on a patient being scanned now; the frame range and
  peak are those seen up to confirmation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from edge.inference.tasks import Detection

EMIT_MODES = ("episode", "onset")


@dataclass
class Event:
    label: str
    first_frame: int
    last_frame: int  # episode: the last positive frame; onset: the confirming frame
    peak: Detection  # the highest-confidence detection of the episode (so far, for onset; latest on a tie)
    peak_frame: int = -1
    largest: Detection | None = None  # the detection with the largest area, when the kind measures one
    largest_frame: int = -1

    def observe(self, det: Detection, frame_index: int) -> None:
        self.last_frame = frame_index
        if det.confidence >= self.peak.confidence:
            self.peak, self.peak_frame = det, frame_index
        if _area(det) is not None and (self.largest is None or _area(det) >= _area(self.largest)):
            self.largest, self.largest_frame = det, frame_index

    def summary(self) -> tuple[Detection, int]:
        """What the finding reports: the peak's confidence (and so its review flag and priority) with the
        measurements and geometry of the largest extent; the frame those come from."""
        if self.largest is None:
            return self.peak, self.peak_frame
        d = self.largest
        # the peak's confidence decides "uncertain"; an out-of-distribution frame on either side counts
        reasons = tuple(dict.fromkeys((*self.peak.review_reasons,
                                       *(r for r in d.review_reasons if not r.startswith("uncertain")))))
        return Detection(d.label, self.peak.confidence, self.peak.positive, self.peak.needs_review or bool(reasons),
                         self.peak.priority, dict(d.measurements), dict(d.geometry), d.overlay_png_b64,
                         reasons, d.picture), self.largest_frame

    @property
    def confidence(self) -> float:
        return self.peak.confidence

    @property
    def frame_range(self) -> tuple[int, int]:
        return (self.first_frame, self.last_frame)


def _area(d: Detection) -> float | None:
    m = d.measurements
    return m.get("area_mm2", m.get("area_px"))


@dataclass
class _LabelState:
    window: deque = field(default_factory=deque)  # (frame_index, Detection | None) of the last frames
    active: bool = False
    neg_run: int = 0
    episode: Event | None = None  # the active episode, while it is being followed (episode mode)


class Hysteresis:
    """Per-stream smoother; keep one per live source or multi-frame object."""

    def __init__(self, on_frames: int = 3, off_frames: int = 5, window: int = 5, emit: str = "onset") -> None:
        if on_frames < 1 or off_frames < 1:
            raise ValueError("on_frames and off_frames must be >= 1")
        if emit not in EMIT_MODES:
            raise ValueError(f"emit must be one of {EMIT_MODES}")
        self.on_frames = on_frames
        self.off_frames = off_frames
        self.window = max(window, on_frames)
        self.emit = emit
        self._labels: dict[str, _LabelState] = {}
        self.events_emitted = 0

    def active_labels(self) -> list[str]:
        return [k for k, s in self._labels.items() if s.active]

    def update(self, frame_index: int, detections: list[Detection]) -> list[Event]:
        """Feed one frame's detections; returns the events this frame confirms (onset) or ends (episode)."""
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
                ep = st.episode
                if det is not None and ep is not None:
                    ep.observe(det, frame_index)
                if st.neg_run >= self.off_frames:
                    st.active = False
                    st.window.clear()
                    if ep is not None:
                        events.append(ep)
                        st.episode = None
                continue
            hits = [(i, d) for i, d in st.window if d is not None]
            if det is not None and len(hits) >= self.on_frames:
                st.active = True
                ev = Event(label, hits[0][0], hits[0][0], hits[0][1], hits[0][0])
                for i, d in hits:
                    ev.observe(d, i)
                ev.last_frame = frame_index
                self.events_emitted += 1
                if self.emit == "onset":
                    events.append(ev)
                else:
                    st.episode = ev
            if not st.active and not hits:
                del self._labels[label]
        return events

    def flush(self) -> list[Event]:
        """The object has ended: episodes still running end here (episode mode; nothing for onset)."""
        out = [st.episode for st in self._labels.values() if st.episode is not None]
        self._labels.clear()
        return out
