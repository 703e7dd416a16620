"""A finding's overlay (the device's PNG: the image with the model's output drawn on it and a caption band
on top) as a DICOM Secondary Capture in the original study.

The picture is RGB, 8 bits, uncompressed. Its caption (label, confidence, NEEDS REVIEW) is burned in, so
BurnedInAnnotation is YES; it carries no patient identifier (the device draws none). The caption band and a
downscale on the device mean its pixels do not line up with the original image's, so it carries no pixel
spacing; the original image is referenced as its source (SourceImageSequence) for navigation only.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import cv2
import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from edge.imaging.relink import Origin
from hospital.dicom import uids
from hospital.dicom.sr import (
    DISCLAIMER,
    MANUFACTURER,
    SC_SERIES_NUMBER,
    SERIES_DESCRIPTION,
    DicomBuildError,
    model_ref,
    require_image,
    software_version,
)
from hospital.dicom.study import StudyAttributes

MAX_OVERLAY_PIXELS = 4096 * 4096


def overlay_rgb(finding: dict[str, Any]) -> np.ndarray | None:
    """The overlay as an RGB uint8 array, or None when the finding has none."""
    b64 = finding.get("overlay_png_b64")
    if not b64:
        return None
    fid = finding.get("finding_id", "?")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise DicomBuildError(f"finding {fid}: overlay_png_b64 is not base64") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.ndim != 3 or img.shape[0] * img.shape[1] > MAX_OVERLAY_PIXELS:
        raise DicomBuildError(f"finding {fid}: overlay_png_b64 is not a PNG picture medge can use")
    return np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))


def build_sc(finding: dict[str, Any], origin: Origin, study: StudyAttributes) -> Dataset | None:
    """The overlay as a Secondary Capture in the original study, or None when the finding has no overlay."""
    rgb = overlay_rgb(finding)
    if rgb is None:
        return None
    require_image(finding, origin)
    fid = str(finding["finding_id"])
    model = model_ref(finding)
    try:
        sc = hd.sc.SCImage(
            pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            study_instance_uid=origin.study_uid,
            series_instance_uid=uids.series_uid("sc", origin.study_uid, model["name"], model["version"]),
            series_number=SC_SERIES_NUMBER, sop_instance_uid=uids.sc_instance_uid(fid), instance_number=1,
            manufacturer=MANUFACTURER, patient_id=study.patient_id, patient_name=study.patient_name,
            patient_birth_date=study.patient_birth_date, patient_sex=study.patient_sex,
            accession_number=study.accession_number, study_id=study.study_id, study_date=study.study_date,
            study_time=study.study_time, referring_physician_name=study.referring_physician_name,
            patient_orientation=("L", "F"))  # replaced below: highdicom wants a value, the truth is unknown
    except (ValueError, TypeError, AttributeError) as e:
        raise DicomBuildError(f"finding {fid}: cannot build the overlay image ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:160]})") from None
    who = f"{model['name']} {model['version']} (sha256 {model['sha256'][:16]})"
    sc.PatientOrientation = None  # type 2: present, empty (the device's display chain may have flipped it)
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = (f"{finding.get('label', '?')} {float(finding.get('confidence', 0)):.2f}"
                        f"{' NEEDS REVIEW' if finding.get('needs_review') else ''}. " + DISCLAIMER.format(model=who))[:10240]
    sc.DerivationDescription = f"overlay of the output of {who} on the source image"[:1024]
    sc.ManufacturerModelName = f"{model['name']} {model['version']}"[:64]
    sc.SoftwareVersions = software_version()
    ref = Dataset()
    ref.ReferencedSOPClassUID = origin.sop_class_uid
    ref.ReferencedSOPInstanceUID = origin.sop_instance_uid
    sc.SourceImageSequence = [ref]
    return sc
