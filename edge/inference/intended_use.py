"""Intended use: what a model was made for, declared in its bundle and enforced on every object.

A cleared product states the inputs it is meant for and refuses the rest; a chest X-ray classifier that
files "focal opacity" on an MR slice or an ultrasound cine is worse than no model, because its output looks
like a reading. So the manifest (schema 2) carries an ``intended_use`` section and the pipeline checks each
frame against it *before* inference: a frame outside it produces no finding from that model, only a count
per reason, one log line per source and reason, and (for stored objects) a non-clinical event.

Rules are checked only where the input says something: a DICOM object without BodyPartExamined is not
refused for its body part (many modalities leave it empty), but one that says ``HEAD`` is refused by a
``[CHEST]`` model. Modality is the exception: an object without one takes the modality the profile
declares for its source, and with neither it is refused (never guessed).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from edge.errors import BundleError
from edge.frames import Frame

COLOURS = ("grey", "colour", "any")


def _u(default: Any, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class Refusal:
    """Why one model does not read one frame: a stable code (for counters and events) and a line for people."""

    reason: str  # a field name of IntendedUse: modality, body_part, view, photometric, colour, spacing, size, age
    detail: str


@dataclass(frozen=True)
class IntendedUse:
    """Empty lists and null ranges mean "not restricted"."""

    modalities: tuple[str, ...] = _u((), "DICOM Modality values the model reads, e.g. [CR, DX]; an object without "
                                     "Modality takes its source's default_modality, else is not read")
    body_parts: tuple[str, ...] = _u((), "BodyPartExamined values, e.g. [CHEST]; objects that leave it empty are read")
    views: tuple[str, ...] = _u((), "ViewPosition values, e.g. [PA, AP]; objects that leave it empty are read")
    photometric: tuple[str, ...] = _u((), "PhotometricInterpretation values as stored, e.g. [MONOCHROME1, MONOCHROME2]")
    colour: str = _u("any", "grey | colour | any: what the display frame is, after the DICOM colour chain")
    pixel_spacing_mm: tuple[float, float] | None = _u(None, "[min, max] of the frame's row and column spacing; frames "
                                                      "without a spacing are read")
    rows: tuple[int, int] | None = _u(None, "[min, max] frame height in pixels")
    columns: tuple[int, int] | None = _u(None, "[min, max] frame width in pixels")
    patient_age_years: tuple[float, float] | None = _u(None, "[min, max] of DICOM PatientAge; objects without one "
                                                       "are read")
    statement: str = _u("", "the intended-use sentence a product's labelling would carry (for people)")

    # ------------------------------------------------------------------------------------ reading
    @classmethod
    def from_dict(cls, d: Any, where: str) -> IntendedUse:
        """Strict: an unknown key or an impossible range is a one-line BundleError, since a typo here would
        silently widen what the model runs on."""
        if not isinstance(d, dict):
            raise BundleError(f"{where}: intended_use must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BundleError(f"{where}: intended_use: unknown key(s) {', '.join(map(str, unknown))} "
                              f"(known: {', '.join(sorted(known))})")

        def names(key: str) -> tuple[str, ...]:
            v = d.get(key) or ()
            if isinstance(v, str):
                v = (v,)
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) and x.strip() for x in v):
                raise BundleError(f"{where}: intended_use.{key} must be a list of names, got {v!r}")
            return tuple(x.strip().upper() for x in v)

        def rng(key: str, integer: bool = False) -> Any:
            v = d.get(key)
            if v is None:
                return None
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise BundleError(f"{where}: intended_use.{key} must be [min, max], got {v!r}")
            try:
                lo, hi = (int(x) if integer else float(x) for x in v)
            except (TypeError, ValueError):
                raise BundleError(f"{where}: intended_use.{key} must be two numbers, got {v!r}") from None
            if lo < 0 or hi < lo or (not integer and hi == 0):
                raise BundleError(f"{where}: intended_use.{key} [{v[0]}, {v[1]}] is an impossible range "
                                  "(needs 0 <= min <= max)")
            return (lo, hi)

        colour = str(d.get("colour", "any"))
        if colour not in COLOURS:
            raise BundleError(f"{where}: intended_use.colour {colour!r} is not one of {', '.join(COLOURS)}")
        return cls(modalities=names("modalities"), body_parts=names("body_parts"), views=names("views"),
                   photometric=names("photometric"), colour=colour, pixel_spacing_mm=rng("pixel_spacing_mm"),
                   rows=rng("rows", True), columns=rng("columns", True),
                   patient_age_years=rng("patient_age_years"), statement=str(d.get("statement") or ""))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v in ((), None, "") or (f.name == "colour" and v == "any"):
                continue
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def describe(self) -> str:
        """One line: what the model is for."""
        parts = [f"{k} {','.join(map(str, v)) if isinstance(v, list) else v}"
                 for k, v in self.to_dict().items() if k != "statement"]
        return "; ".join(parts) or "any input"

    # ----------------------------------------------------------------------------------- checking
    def accepts_modality(self, modality: str | None) -> bool:
        return not self.modalities or (modality or "").upper() in self.modalities

    def check(self, frame: Frame) -> list[Refusal]:
        """Every rule the frame breaks (empty: the model may read it)."""
        out: list[Refusal] = []
        acq = frame.acquisition
        mod = (frame.modality or "").upper()
        if self.modalities and mod not in self.modalities:
            what = f"modality {mod}" if mod else "no modality (the object has none and the source declares none)"
            out.append(Refusal("modality", f"{what}; the model is for {', '.join(self.modalities)}"))
        for code, allowed, value, element in (("body_part", self.body_parts, acq.body_part if acq else None,
                                               "BodyPartExamined"),
                                              ("view", self.views, acq.view if acq else None, "ViewPosition"),
                                              ("photometric", self.photometric, acq.photometric if acq else None,
                                               "PhotometricInterpretation")):
            if allowed and value and value.upper() not in allowed:
                out.append(Refusal(code, f"{element} {value}; the model is for {', '.join(allowed)}"))
        colour = frame.pixels.ndim == 3
        if (self.colour == "grey" and colour) or (self.colour == "colour" and not colour):
            out.append(Refusal("colour", f"a {'colour' if colour else 'greyscale'} image; the model is for "
                                         f"{self.colour} images"))
        if self.pixel_spacing_mm and frame.spacing_mm:
            lo, hi = self.pixel_spacing_mm
            if not all(lo <= s <= hi for s in frame.spacing_mm):
                out.append(Refusal("spacing", f"pixel spacing {frame.spacing_mm[0]:g} x {frame.spacing_mm[1]:g} mm; "
                                              f"the model is for {lo:g}-{hi:g} mm"))
        for code, r, v, what in (("size", self.rows, frame.height, "rows"), ("size", self.columns, frame.width, "columns")):
            if r and not r[0] <= v <= r[1]:
                out.append(Refusal(code, f"{v} {what}; the model is for {r[0]}-{r[1]}"))
        age = acq.patient_age_years if acq else None
        if self.patient_age_years and age is not None:
            lo, hi = self.patient_age_years
            if not lo <= age <= hi:
                out.append(Refusal("age", f"patient age {age:g} years; the model is for {lo:g}-{hi:g} years"))
        return out
