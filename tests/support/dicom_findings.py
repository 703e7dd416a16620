"""Findings as the hospital stores them, sealed to a test re-link key, for the DICOM output tests."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom

from edge.findings import Finding, ModelRef
from edge.imaging.relink import Origin, OriginSealer
from hospital.relink import keygen
from hospital.store import Received, open_store
from tests.support import ROOT

ORIGINAL = ROOT / "models" / "samples" / "cxr_opacity.dcm"


def original_origin(path: Path = ORIGINAL) -> Origin:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Origin(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID))


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path


def make_keys(folder: Path, name: str = "relink") -> Keys:
    k = Keys(folder / f"{name}.key", folder / f"{name}.pub.pem")
    keygen(k.private, k.public)
    return k


def overlay_png(w: int = 96, h: int = 80) -> str:
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (0, 0, 255)  # BGR: red on the left
    img[:, w // 2:] = (255, 0, 0)  # blue on the right
    return base64.b64encode(cv2.imencode(".png", img)[1].tobytes()).decode("ascii")


def make_finding(finding_id: str, origin: Origin | None, keys: Keys | None, *, coded: bool = True, overlay: bool = True,
                 needs_review: bool = True) -> Finding:
    sealed = OriginSealer.load(keys.public).seal(origin, finding_id) if origin is not None and keys is not None else None
    return Finding(
        device_id="xray-1", modality="CR", model=ModelRef("cxr-nodule", "1.2.0", "ab" * 32, "int8"), label="nodule",
        confidence=0.87, needs_review=needs_review, priority="urgent", study_id="pseudo-study", instance_id="pseudo-inst",
        created_at="2026-12-01T10:00:00.000Z", frame_index=0,
        measurements={"area_mm2": 312.5, "count": 2.0, "largest_box_w_mm": 36.9, "largest_box_h_mm": 29.6},
        geometry={"frame_size": [512, 512], "contours": [[[10.0, 10.0], [40.0, 10.0], [40.0, 30.0], [10.0, 30.0]]],
                  "boxes": [[100.0, 100.0, 150.0, 140.0, 0.91], [200.0, 210.0, 230.0, 250.0, 0.62]]},
        review_reasons=["uncertain: 0.87 inside the review band 0.8-0.9"] if needs_review else [],
        code={"scheme": "SCT", "value": "27925004", "meaning": "Nodule"} if coded else None,
        overlay_png_b64=overlay_png() if overlay else None, origin_sealed=sealed, finding_id=finding_id)


def store_findings(db: Path | str, findings: list[Finding], received_at: str = "2026-12-01T10:00:01.000Z") -> None:
    """As a receiver stores them, in a SQLite file or a postgresql:// database."""
    store = open_store(str(db))
    try:
        store.add([Received(f.finding_id, "site-a", f.device_id, f.priority, f"medge/site-a/{f.device_id}/findings/{f.priority}",
                            received_at, f.to_json()) for f in findings], [])
    finally:
        store.close()
