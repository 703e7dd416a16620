"""What a bundle's ``intended_use`` says: declared in the spec or by flags, else read off the calibration DICOMs.

The calibration set is by definition what the model was checked on, so its DICOM headers are the honest
default for what the device may feed it: the modalities, body parts, views and photometric interpretations
it contains, its colour, and its pixel spacing and image sizes widened by a stated margin (a detector of
another vendor has another pixel pitch; a factor of 1.5 in spacing and 2 in size is what resizing can
absorb without the anatomy leaving the scale the model learnt). Every inferred key is printed, so the
person exporting sees and can correct what the device will enforce. Without DICOM among the calibration
inputs the modality cannot be known and must be declared: a model without one would run on anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import BundleError, InputError
from edge.inference.intended_use import IntendedUse

SPACING_MARGIN = 1.5
SIZE_MARGIN = 2.0


@dataclass
class InferredUse:
    use: IntendedUse
    origin: dict[str, str] = field(default_factory=dict)  # key -> "spec file" | "flag --modality" | "inferred ..."

    def lines(self) -> list[str]:
        d = self.use.to_dict()
        return [f"{k}: {d[k]}  ({self.origin.get(k, 'inferred')})" for k in d]


def _headers(calib_files: list[Path]) -> list[dict[str, Any]]:
    """What each calibration DICOM says about its acquisition (headers only; unreadable files were
    already refused when the calibration set was loaded)."""
    from edge.imaging.dicom import acquisition, describe, is_dicom_file, read_dicom

    out = []
    for p in calib_files:
        if p.suffix.lower() != ".dcm" or not is_dicom_file(p):
            continue
        ds = read_dicom(p)
        info, acq = describe(ds, p), acquisition(ds)
        out.append({"modality": info.modality, "body_part": acq.body_part, "view": acq.view,
                    "photometric": acq.photometric, "spacing": info.spacing_mm, "rows": info.rows,
                    "columns": info.columns, "age": acq.patient_age_years})
    return out


def infer(calib_files: list[Path], declared: Any, modalities: list[str] | None, where: str) -> InferredUse:
    """Spec file keys, then ``--modality``, then what the calibration DICOMs show."""
    if declared is not None and not isinstance(declared, dict):
        raise InputError(f"{where}: intended_use must be a mapping of the keys in docs/MODEL_SPEC.md")
    given = dict(declared or {})
    origin = {k: "spec file" for k in given}
    if modalities:
        given["modalities"], origin["modalities"] = list(modalities), "flag --modality"
    heads = _headers(calib_files)
    n = len(heads)

    def seen(key: str) -> list[str]:
        return sorted({str(h[key]).upper() for h in heads if h[key]})

    inferred: dict[str, Any] = {}
    for key, field_name in (("modality", "modalities"), ("body_part", "body_parts"), ("view", "views"),
                            ("photometric", "photometric")):
        if seen(key):
            inferred[field_name] = seen(key)
    phot = seen("photometric")
    if phot:
        grey = {p.startswith("MONOCHROME") for p in phot}
        if len(grey) == 1:
            inferred["colour"] = "grey" if grey.pop() else "colour"
    spacings = [s for h in heads if (s := h["spacing"])]
    if spacings:
        inferred["pixel_spacing_mm"] = [round(min(min(s) for s in spacings) / SPACING_MARGIN, 4),
                                        round(max(max(s) for s in spacings) * SPACING_MARGIN, 4)]
    for key in ("rows", "columns"):
        vals = [h[key] for h in heads if h[key]]
        if vals:
            inferred[key] = [max(1, int(min(vals) / SIZE_MARGIN)), int(max(vals) * SIZE_MARGIN)]
    ages = [h["age"] for h in heads if h["age"] is not None]
    if ages and len(ages) == n:
        inferred["patient_age_years"] = [min(ages), max(ages)]
    for k, v in inferred.items():
        if k not in given:
            given[k], origin[k] = v, f"inferred from {n} calibration DICOM file(s)"
    if not given.get("modalities"):
        raise InputError(f"{where}: cannot tell which modalities the model is for (no DICOM among the calibration "
                         "inputs); declare them with --modality CR,DX (comma-separated) or intended_use.modalities "
                         "in the spec")
    try:
        use = IntendedUse.from_dict(given, where)
    except BundleError as e:
        raise InputError(str(e)) from None
    return InferredUse(use, origin)
