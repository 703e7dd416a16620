"""A detection (or a confirmed video event) becomes the `Finding` that leaves the device.

Ids: findings from stored objects (DICOM) are uuid5 over what identifies them, so a re-processed object
after a crash yields the same id and the outbox and the receiver de-duplicate it; live video events get
a random UUID4. Study identifiers are replaced by the device's keyed pseudonyms before a finding exists.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from edge.events import DeviceEvent, event_id
from edge.findings import Finding, ModelRef, iso_utc
from edge.frames import Frame, StudyRef
from edge.imaging.relink import OriginSealer
from edge.inference.tasks import Detection
from edge.inference.tasks.overlay import OverlayPolicy, render

FINDING_NAMESPACE = uuid.UUID("6f1d7c2e-4b1a-5e8f-9c3d-2a7b8e9f0a1b")  # fixed forever: ids must be reproducible


PseudonymFn = Callable[[StudyRef], tuple[str | None, str | None, str | None]]


def deterministic_id(device_id: str, sop_instance_uid: str, model_sha256: str, label: str, event_start: int | None = None) -> str:
    """uuid5 over what identifies a finding on a stored object, so re-processing after a crash yields
    the same id and the outbox/receiver deduplicate it. Multi-frame objects can hold several events of
    one label; the first frame of the event keeps them apart (still deterministic: stored frames are
    never dropped)."""
    name = f"{device_id}|{sop_instance_uid}|{model_sha256}|{label}"
    if event_start is not None:
        name += f"|f{event_start}"
    return str(uuid.uuid5(FINDING_NAMESPACE, name))


@dataclass
class FindingBuilder:
    """Turns a detection (or a confirmed video event) into the `Finding` that leaves the device."""

    device_id: str
    model: ModelRef
    pseudonymize: PseudonymFn | None = None
    sealer: OriginSealer | None = None  # the hospital's re-link key: original UIDs travel sealed to it
    codes: dict[str, dict[str, str]] | None = None  # label -> coded concept, from the manifest
    overlays: OverlayPolicy | None = None  # which findings get a picture (None: none)

    def build(self, det: Detection, frame: Frame, latency_ms: float, frame_range: tuple[int, int] | None = None,
              event_start: int | None = None, frame_index: int | None = None) -> Finding:
        """``frame_index`` (default: the frame's) is the frame the measurements and geometry describe."""
        study = series = instance = None
        if frame.study is not None and self.pseudonymize is not None:
            study, series, instance = self.pseudonymize(frame.study)
        sop = frame.study.sop_instance_uid if frame.study else None
        fid = (deterministic_id(self.device_id, sop, self.model.sha256, det.label, event_start)
               if sop and not frame.live else str(uuid.uuid4()))
        sealed = self.sealer.seal_study(frame.study, fid) if self.sealer is not None else None
        return Finding(
            # a bundle without an intended use reads objects without Modality too: say "other", never ""
            device_id=self.device_id, modality=frame.modality or "OT", model=self.model, label=det.label,
            confidence=round(float(det.confidence), 4), needs_review=bool(det.needs_review), priority=det.priority,
            study_id=study, series_id=series, instance_id=instance, acquired_at=iso_utc(frame.acquired_at),
            created_at=iso_utc(time.time()), source=frame.source,
            frame_index=frame.index if frame_index is None else frame_index, frame_range=frame_range,
            measurements=dict(det.measurements), geometry=dict(det.geometry), latency_ms=round(latency_ms, 2),
            overlay_png_b64=det.overlay_png_b64 or self._picture(det), finding_id=fid, review_reasons=list(det.review_reasons),
            code=dict(self.codes[det.label]) if self.codes and det.label in self.codes else None, origin_sealed=sealed,
        )

    def _picture(self, det: Detection) -> str | None:
        p = self.overlays
        return render(det.picture, det, p.max_side) if p is not None and p.wants(det.priority, det.needs_review) else None

    def event(self, kind: str, reason: str, detail: str, frame: Frame, *, priority: str = "low",
              stored_object: bool = True, measurements: dict[str, float] | None = None) -> DeviceEvent:
        """A non-clinical event about ``frame``. For a stored object (``stored_object``) it names the object by
        its pseudonyms and has a deterministic id, so re-reading the object after a restart adds nothing."""
        study = series = instance = None
        if stored_object and frame.study is not None and self.pseudonymize is not None:
            study, series, instance = self.pseudonymize(frame.study)
        sop = frame.study.sop_instance_uid if frame.study else None
        ev = DeviceEvent(device_id=self.device_id, kind=kind, reason=reason, detail=detail, model=self.model,
                         source=frame.source, modality=frame.modality or None, priority=priority, study_id=study,
                         series_id=series, instance_id=instance,
                         acquired_at=iso_utc(frame.acquired_at) if stored_object else None,
                         measurements=dict(measurements or {}))
        if stored_object and sop and not frame.live:
            ev.event_id = event_id(self.device_id, sop, self.model.sha256, kind, reason)
        return ev
