"""DeviceEvent: a non-clinical record the hospital must see, travelling the findings' durable path.

Two things happen on a device that are not findings about a patient but that the hospital has to know:
a stored object was refused by a model because it lies outside the model's intended use (so nobody
assumes it was read and found normal), and a model's inputs drifted away from what it was validated on.
They go through the same outbox, acknowledgement and exactly-once store as findings, but under their own
schema (``medge.event/1``, ``edge/schemas/event.v1.json``) so no review list or audit can mistake one for
a finding. Like findings they carry only pseudonymized ids.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.findings import PRIORITIES, ModelRef, iso_utc

EVENT_SCHEMA = "medge.event/1"
EVENT_NAMESPACE = uuid.UUID("0b6f1a52-3c1e-5d47-8a9e-6c2d4f0e1a37")  # fixed forever: ids must be reproducible
# kind -> what it means, for people reading an events list
EVENT_KINDS = {
    "out_of_scope": "a stored object was not analysed by a model: it lies outside the model's intended use",
    "drift": "a model's recent inputs or outputs moved away from the reference statistics it was exported with",
}


def event_id(*parts: str) -> str:
    """uuid5 over what identifies an event, so a re-processed object yields the same id (deduplicated)."""
    return str(uuid.uuid5(EVENT_NAMESPACE, "|".join(parts)))


@dataclass
class DeviceEvent:
    device_id: str
    kind: str  # a key of EVENT_KINDS
    reason: str  # a short code: the intended-use rule (modality, body_part, ...) or the drift statistic
    detail: str  # one line an operator or a hospital IT person can act on
    model: ModelRef | None = None
    source: str | None = None
    modality: str | None = None
    priority: str = "low"
    study_id: str | None = None  # pseudonyms, as in findings
    series_id: str | None = None
    instance_id: str | None = None
    acquired_at: str | None = None
    created_at: str = field(default_factory=iso_utc)
    measurements: dict[str, float] = field(default_factory=dict)  # e.g. {"psi": 0.41, "frames": 120}
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    schema: str = EVENT_SCHEMA

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {tuple(EVENT_KINDS)}, got {self.kind!r}")
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {self.priority!r}")

    def describe(self) -> str:
        model = f"{self.model.name} {self.model.version}" if self.model else "-"
        return f"[{self.kind}] {self.reason}: {self.detail}  ({self.source or '-'}, {model})"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceEvent:
        d = dict(d)
        if d.get("model") is not None:
            d["model"] = ModelRef(**d["model"])
        return cls(**d)
