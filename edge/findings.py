"""Finding: the structured, pseudonymized result that leaves the device.

Findings are decision support, never a diagnosis: every one names the exact model (name, version,
SHA-256 of the file that ran), carries its confidence, and sets ``needs_review`` when the model was
uncertain. Study identifiers are keyed pseudonyms (see `edge.imaging.deid`); raw patient identifiers are never
placed in a Finding. The JSON form is described by ``edge/schemas/finding.v1.json``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

SCHEMA = "medge.finding/1"
PRIORITIES = ("urgent", "routine", "low")


def iso_utc(epoch: float | None = None, timespec: str = "milliseconds") -> str:
    """ISO 8601 UTC with a Z, the one timestamp format findings, status and telemetry messages carry."""
    t = time.time() if epoch is None else epoch
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    sha256: str
    variant: str = "fp32"


@dataclass
class Finding:
    device_id: str
    modality: str
    model: ModelRef
    label: str
    confidence: float
    needs_review: bool
    priority: str = "routine"
    study_id: str | None = None  # pseudonym, never the original StudyInstanceUID
    series_id: str | None = None  # pseudonym
    instance_id: str | None = None  # pseudonym
    acquired_at: str | None = None  # ISO 8601 UTC of image acquisition/capture
    created_at: str | None = None  # ISO 8601 UTC when the finding was produced
    source: str | None = None
    frame_index: int | None = None
    frame_range: tuple[int, int] | None = None  # for video events: first and last frame of the event
    measurements: dict[str, float] = field(default_factory=dict)  # e.g. {"area_mm2": 312.5}
    geometry: dict[str, Any] = field(default_factory=dict)  # e.g. {"contours": [...], "box": [...]}
    latency_ms: float | None = None  # capture -> finding
    overlay_png_b64: str | None = None  # optional small overlay, masked outside the imaging region
    review_reasons: list[str] = field(default_factory=list)  # why needs_review: uncertain, out of distribution
    code: dict[str, str] | None = None  # the label's code from the manifest: {"scheme", "value", "meaning"}
    origin_sealed: str | None = None  # original UIDs, HPKE-sealed to the hospital's key (edge.imaging.relink)
    finding_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {self.priority!r}")
        if not 0.0 <= float(self.confidence) <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {self.confidence}")

    def describe(self) -> str:
        """One line an operator reads: priority, label, confidence, modality, review flag, measurements,
        frames, where it came from and the exact model."""
        parts = [f"[{self.priority}]", self.label, f"{self.confidence:.2f}", self.modality]
        if self.needs_review:
            ood = any(r.startswith("out of distribution") for r in self.review_reasons)
            parts.append("NEEDS REVIEW (out of distribution)" if ood else "NEEDS REVIEW")
        m = self.measurements
        if "area_mm2" in m:
            parts.append(f"area {m['area_mm2']:.1f} mm²")
        elif "area_px" in m:
            parts.append(f"area {m['area_px']:.0f} px (no pixel spacing)")
        if "count" in m:
            parts.append(f"{int(m['count'])} box(es)")
        if self.frame_range:
            parts.append(f"frames {self.frame_range[0]}-{self.frame_range[1]}")
        elif self.frame_index is not None:
            parts.append(f"frame {self.frame_index}")
        if self.latency_ms is not None:
            parts.append(f"latency {self.latency_ms:.1f} ms")
        parts.append(f"({self.source or '-'}, {self.model.name} {self.model.version} {self.model.variant})")
        return "  ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["frame_range"] is not None:
            d["frame_range"] = list(d["frame_range"])
        return {k: v for k, v in d.items() if v is not None and not (k == "review_reasons" and not v)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        d = dict(d)
        d["model"] = ModelRef(**d["model"])
        if d.get("frame_range") is not None:
            d["frame_range"] = tuple(d["frame_range"])
        return cls(**d)

    @classmethod
    def from_json(cls, s: str | bytes) -> Finding:
        return cls.from_dict(json.loads(s))
