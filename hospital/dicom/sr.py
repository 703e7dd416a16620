"""A finding as a DICOM Structured Report: Comprehensive 3D SR, TID 1500 Imaging Measurement Report.

Content tree (docs/HOSPITAL.md has the codes in a table):

- title DCM 126000 "Imaging Measurement Report"; procedure reported SCT 363679005 "Imaging procedure"
- observer context: a device observer (TID 1004) for the model that ran: UID from its name, version and
  SHA-256, name and model name = the model's name, manufacturer "medge"
- one image-level group (TID 1501) on the original image: finding type = the finding's code (or the private
  ``99MEDGE`` code of its label), algorithm identification (TID 4019: family DCM 123110 "Artificial
  Intelligence", name, version, parameters ``sha256=...`` and ``variant=...``), the confidence as DCM 111012
  "Certainty of Finding" in percent, the finding's measurements (area mm2, largest box width/height mm,
  probability, count, others under private codes), qualitative evaluation "needs review" yes/no, each review
  reason and the decision-support statement as TEXT (DCM 121106 "Comment")
- one planar ROI group (TID 1410) per contour or box: SCOORD POLYLINE (closed) in the original image's pixel
  space (column, row; boxes as rectangles, with their score as "Certainty of Finding"), and for a classifier
  with an explanation map a SCOORD POINT at the map's peak

The SR is flagged PRELIMINARY and UNVERIFIED (no person signed it) and its series says AI decision support,
so no reader takes it for a clinician's report.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from edge.errors import MedgeError
from edge.imaging.relink import Origin
from hospital.dicom import uids
from hospital.dicom.study import KEYWORDS, StudyAttributes

PRIVATE_SCHEME = "99MEDGE"  # private coding scheme (PS3.16 8.2: 99 prefix) for labels without a code
MANUFACTURER = "medge"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
DISCLAIMER = ("AI decision support produced by {model}: for review by a clinician, not a diagnosis. "
              "Not verified by a person.")
SERIES_DESCRIPTION = "AI decision support (medge) - not a diagnosis"

CERTAINTY = codes.DCM.CertaintyOfFinding  # 111012, expressed in percent as in the CAD SR templates
NEEDS_REVIEW = hd.sr.CodedConcept("needs-review", PRIVATE_SCHEME, "Needs review by a clinician")
PRIVATE_SCHEME_ITEM = CodingSchemeIdentificationItem(PRIVATE_SCHEME, name="medge labels and attributes",
                                                     responsible_organization="medge")
PERCENT = codes.UCUM.Percent
NO_UNITS = codes.UCUM.NoUnits
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")

# measurement key -> (concept name, unit)
MEASUREMENTS: dict[str, tuple[Any, Any]] = {
    "area_mm2": (codes.SCT.Area, codes.UCUM.SquareMillimeter),
    "largest_box_w_mm": (codes.SCT.Width, codes.UCUM.Millimeter),
    "largest_box_h_mm": (codes.DCM.Height, codes.UCUM.Millimeter),
    "probability": (codes.DCM.Probability, NO_UNITS),
    "count": (codes.DCM.NumberOfSimilarFindings, NO_UNITS),
}

# SOP classes whose instances have frames (a SCOORD then names the frame it lies on)
MULTI_FRAME_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
    "1.2.840.10008.5.1.4.1.1.12.1", "1.2.840.10008.5.1.4.1.1.12.1.1",  # X-Ray Angiographic (Enhanced)
    "1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.12.2.1",  # X-Ray Radiofluoroscopic (Enhanced)
    "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame Secondary Capture
    "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic
}


class DicomBuildError(MedgeError):
    """A finding cannot be written as DICOM (what it lacks is in the message)."""


def label_code(finding: dict[str, Any]) -> hd.sr.CodedConcept:
    """The finding's code, or the private code of its label (value = meaning = the label)."""
    c = finding.get("code")
    if c:
        return hd.sr.CodedConcept(str(c["value"]), str(c["scheme"]), str(c["meaning"]))
    label = str(finding["label"])
    return hd.sr.CodedConcept(label[:64], PRIVATE_SCHEME, label[:64])


def _private_measurement(key: str) -> tuple[Any, Any]:
    unit = (codes.UCUM.SquareMillimeter if key.endswith("_mm2") else codes.UCUM.Millimeter if key.endswith("_mm")
            else PIXELS if key.endswith("_px") else NO_UNITS)
    return hd.sr.CodedConcept(key[:16], PRIVATE_SCHEME, key.replace("_", " ")), unit


def model_ref(finding: dict[str, Any]) -> dict[str, str]:
    m = finding.get("model") or {}
    return {"name": str(m.get("name") or "?"), "version": str(m.get("version") or "?"),
            "sha256": str(m.get("sha256") or ""), "variant": str(m.get("variant") or "fp32")}


def require_image(finding: dict[str, Any], origin: Origin) -> None:
    if not (origin.study_uid and origin.series_uid and origin.sop_instance_uid and origin.sop_class_uid):
        raise DicomBuildError(f"finding {finding.get('finding_id', '?')}: its sealed origin names the study but not the "
                              "image (series, SOP instance and class), so no report can reference it")


def evidence(origin: Origin, study: StudyAttributes) -> Dataset:
    """The original image as SR evidence, carrying the study and patient attributes the SR inherits."""
    ds = Dataset()
    ds.StudyInstanceUID = origin.study_uid
    ds.SeriesInstanceUID = origin.series_uid
    ds.SOPInstanceUID = origin.sop_instance_uid
    ds.SOPClassUID = origin.sop_class_uid
    for keyword, name in KEYWORDS.items():
        setattr(ds, keyword, getattr(study, name) or None)
    return ds


def _created(finding: dict[str, Any]) -> dt.datetime | None:
    s = finding.get("created_at")
    if not s:
        return None
    try:
        return dt.datetime.fromisoformat(str(s).replace("Z", "+00:00")).astimezone(dt.timezone.utc).replace(tzinfo=None)
    except ValueError:
        return None


def _text(name: Any, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1000], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _closed(points: list[list[float]]) -> np.ndarray | None:
    pts = np.asarray([p[:2] for p in points], dtype=np.float32)
    if pts.ndim != 2 or len(pts) < 3:
        return None
    if not np.array_equal(pts[0], pts[-1]):
        pts = np.vstack([pts, pts[:1]])
    return pts


def _regions(finding: dict[str, Any]) -> list[tuple[str, np.ndarray, float | None]]:
    """(kind, closed polyline in image pixels (column, row) or one point, score or None) for each contour and
    box, and the peak of a classifier's explanation map (where the class-activation map is hottest)."""
    geo = finding.get("geometry") or {}
    out: list[tuple[str, np.ndarray, float | None]] = []
    peak = geo.get("heatmap_peak")
    if isinstance(peak, list) and len(peak) == 2:
        out.append(("explanation peak", np.asarray([peak], np.float32), None))
    for c in geo.get("contours") or []:
        pts = _closed(c)
        if pts is not None:
            out.append(("contour", pts, None))
    for b in geo.get("boxes") or []:
        x0, y0, x1, y1 = (float(v) for v in b[:4])
        if x1 > x0 and y1 > y0:
            out.append(("box", np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], np.float32),
                        float(b[4]) if len(b) > 4 else None))
    return out


def build_sr(finding: dict[str, Any], origin: Origin, study: StudyAttributes) -> Dataset:
    """The finding as an SR in the original study (SOP Instance UID from the finding id)."""
    fid = str(finding["finding_id"])
    require_image(finding, origin)
    model = model_ref(finding)
    code = label_code(finding)
    try:
        confidence = float(finding["confidence"])
    except (KeyError, TypeError, ValueError):
        raise DicomBuildError(f"finding {fid}: no numeric confidence") from None
    frames = None
    if origin.sop_class_uid in MULTI_FRAME_CLASSES and finding.get("frame_index") is not None:
        frames = [int(finding["frame_index"]) + 1]  # DICOM frame numbers start at 1
    algorithm = hd.sr.AlgorithmIdentification(
        name=model["name"], version=model["version"], family=codes.DCM.ArtificialIntelligence,
        parameters=[f"sha256={model['sha256']}", f"variant={model['variant']}"], manufacturer=MANUFACTURER)

    measurements = [hd.sr.Measurement(name=CERTAINTY, value=round(confidence * 100.0, 3), unit=PERCENT)]
    for key, value in sorted((finding.get("measurements") or {}).items()):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
            continue
        name, unit = MEASUREMENTS.get(key) or _private_measurement(key)
        measurements.append(hd.sr.Measurement(name=name, value=float(value), unit=unit))
    review = bool(finding.get("needs_review"))
    evaluations = [hd.sr.QualitativeEvaluation(NEEDS_REVIEW, codes.SCT.Yes if review else codes.SCT.No)]
    image_group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.tracking_uid(fid, "image"), identifier=f"medge finding {fid}"),
        finding_type=code, algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup(origin.sop_class_uid, origin.sop_instance_uid, frames)])
    who = f"{model['name']} {model['version']} (sha256 {model['sha256'][:16]})"
    texts = [_text(codes.DCM.Comment, DISCLAIMER.format(model=who))]
    texts += [_text(codes.DCM.Comment, f"needs review: {r}") for r in finding.get("review_reasons") or []]
    # TID 1501 has no TEXT row of its own; the comments follow the group's content as CONTAINS items
    image_group[0].ContentSequence.extend(texts)

    groups: list[Any] = [image_group]
    source = hd.sr.SourceImageForRegion(origin.sop_class_uid, origin.sop_instance_uid, frames)
    for i, (kind, pts, score) in enumerate(_regions(finding), start=1):
        region_measurements = ([hd.sr.Measurement(name=CERTAINTY, value=round(score * 100.0, 3), unit=PERCENT)]
                                if score is not None else None)
        groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uids.tracking_uid(fid, f"region-{i}"),
                                                         identifier=f"medge finding {fid} {kind} {i}"),
            referenced_region=hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POINT if len(pts) == 1
                                                else hd.sr.GraphicTypeValues.POLYLINE, pts, source),
            finding_type=code, algorithm_id=algorithm, measurements=region_measurements))

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=uids.device_uid(model["name"], model["version"], model["sha256"]), name=model["name"][:64],
            manufacturer_name=MANUFACTURER, model_name=f"{model['name']} {model['version']}"[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure, imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport)
    created = _created(finding)
    kw: dict[str, Any] = {}
    if created is not None:
        kw = {"content_date": created.date(), "content_time": created.time()}
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[evidence(origin, study)], content=report[0],
            series_instance_uid=uids.series_uid("sr", origin.study_uid, model["name"], model["version"]),
            series_number=SR_SERIES_NUMBER, sop_instance_uid=uids.sr_instance_uid(fid), instance_number=1,
            manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            series_description=SERIES_DESCRIPTION, coding_schemes=[PRIVATE_SCHEME_ITEM],
            manufacturer_model_name=f"{model['name']} {model['version']}"[:64], software_versions=software_version(),
            **kw)
    except (ValueError, TypeError, AttributeError) as e:
        raise DicomBuildError(f"finding {fid}: cannot build the SR "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
    return sr


def software_version() -> str:
    from edge import __version__

    return f"medge {__version__}"
