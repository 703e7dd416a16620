"""De-identification of everything that leaves the device.

Findings need to be linkable back to the study *by the hospital*, never by whoever reads the broker: every
UID is replaced by a keyed pseudonym, HMAC-SHA256 under a per-device secret, formatted as a valid
"2.25.<integer>" UID. The same study gives the same pseudonym on this device for as long as the key
exists (so a re-processed object deduplicates), and without the key the mapping cannot be reversed or
recomputed from a guessed UID. The key is created on first start (32 random bytes, mode 0600, atomic).

Datasets that leave get the PS3.15 Annex E Basic Application Level Confidentiality Profile; ultrasound
pixels are masked outside the imaging region because scanners burn patient names into the frame border.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import logging
import os
import secrets
import uuid
from pathlib import Path

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from edge.errors import ConfigError, InputError
from edge.frames import Frame, Region, StudyRef

KEY_BYTES = 32
log = logging.getLogger(__name__)


class Pseudonymizer:
    """Keyed, stable, one-way pseudonyms for DICOM UIDs and other identifiers."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_BYTES:
            raise ValueError(f"pseudonym key must be at least {KEY_BYTES} bytes")
        self._key = bytes(key)

    @classmethod
    def load_or_create(cls, path: Path | str) -> Pseudonymizer:
        """Read the device key, creating it on first start.

        Creation is temp file (O_EXCL, 0600) + fsync + hard link: two processes starting at once cannot
        both win, and nobody ever reads a half-written key. A wrong-sized key is refused rather than
        replaced, because a new key silently changes every pseudonym this device has ever sent.
        """
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
                log.info("created pseudonym key %s", path.name)
            except FileExistsError:
                pass  # another process created it first; use theirs
            finally:
                tmp.unlink(missing_ok=True)
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        try:
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                os.chmod(path, 0o600)
                log.warning("pseudonym key %s was readable by others (mode %o); fixed to 600", path.name, mode)
            key = path.read_bytes()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read pseudonym key ({e.strerror})") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(f"{path}: pseudonym key is {len(key)} bytes, expected {KEY_BYTES}; restore it from "
                              "backup (a new key would change every pseudonym this device has sent)")
        return cls(key)

    def _mac(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, value: str) -> str:
        """A valid DICOM UID (2.25 = UUID-derived root, <= 44 chars) standing for ``value``."""
        return "2.25." + str(int.from_bytes(self._mac("uid", str(value).strip())[:16], "big"))

    pseudonymize_uid = uid

    def token(self, value: str, kind: str = "id") -> str:
        """A short lowercase token (16 chars) for non-UID identifiers such as a patient ID."""
        return base64.b32encode(self._mac(kind, str(value).strip())[:10]).decode().lower()

    def study_ids(self, ref: StudyRef) -> tuple[str | None, str | None, str | None]:
        """(study, series, instance) pseudonyms, the triple a `Finding` carries."""
        return tuple(self.uid(u) if u else None for u in (ref.study_uid, ref.series_uid, ref.sop_instance_uid))  # type: ignore[return-value]


# ------------------------------------------------------------------------------- Basic Profile (E.1-1)

# Z: keep the (type 2) attribute but empty it. Everything else named here is removed (X). D attributes
# that a receiver needs are given a dummy value instead.
_ZERO = {
    "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "ContentDate", "ContentTime",
}
_REMOVE = {
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "StationName", "OperatorsName", "OperatorIdentificationSequence", "PerformingPhysicianName",
    "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "RequestingPhysician", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "ReferringPhysicianIdentificationSequence", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAge",
    "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers", "MilitaryRank", "BranchOfService",
    "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments", "MedicalRecordLocator",
    "CountryOfResidence", "RegionOfResidence", "PatientReligiousPreference", "PatientBirthTime",
    "IssuerOfPatientID", "PatientInsurancePlanCodeSequence", "CurrentPatientLocation", "PatientState",
    "MedicalAlerts", "Allergies", "SmokingStatus", "PregnancyStatus", "LastMenstrualDate", "SpecialNeeds",
    "StudyDescription", "SeriesDescription", "ImageComments", "FrameComments", "DerivationDescription",
    "AcquisitionComments", "ProtocolName", "RequestAttributesSequence", "ReferencedPatientSequence",
    "ReferencedStudySequence", "AdmittingDiagnosesDescription", "AdmittingDiagnosesCodeSequence",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime", "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime",
    "ScheduledProcedureStepID", "RequestedProcedureID", "RequestedProcedureDescription", "DeviceSerialNumber",
    "PlateID", "CassetteID", "GantryID", "DetectorID", "ContentCreatorName", "PersonName", "ResponsiblePerson",
    "ResponsibleOrganization", "AdmissionID", "IssuerOfAdmissionID", "ServiceEpisodeID", "PatientTransportArrangements",
    "ReasonForStudy", "RequestedContrastAgent", "StudyComments", "TextComments", "TextString", "TopicTitle",
    "TopicAuthor", "TopicKeywords", "TopicSubject", "VisitComments", "InterpretationText", "ResultsComments",
    "OriginalAttributesSequence", "ModifiedAttributesSequence", "DigitalSignaturesSequence",
    "SourceImageSequence", "ReferencedImageSequence", "ReferencedPerformedProcedureStepSequence",
    "InstanceCreatorUID",
}
# UIDs that name *kinds* of things (SOP classes, syntaxes, coding schemes), not patients: kept
_KEEP_UID = {
    "SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
    "ImplementationClassUID", "CodingSchemeUID", "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID",
    "ReferencedSOPClassUIDInFile", "ReferencedTransferSyntaxUIDInFile", "AffectedSOPClassUID",
    "RequestedSOPClassUID", "ContextGroupExtensionCreatorUID", "MappingResourceUID",
}
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
CLEAN_PIXELS_CODE = ("113101", "DCM", "Clean Pixel Data Option")


def deidentify_dataset(ds: Dataset, pseudonymizer: Pseudonymizer, *, mask_pixels: bool = True) -> Dataset:
    """A de-identified copy of ``ds`` (the original is untouched).

    Beyond the named attributes of Table E.1-1, anything whose VR is a person name or a date/time is
    removed (or emptied when it is a type 2 attribute above), private and overlay/curve groups are
    dropped, and every instance UID becomes its keyed pseudonym, including those inside sequences and the
    file meta, so references between de-identified objects stay consistent. With ``mask_pixels`` an
    ultrasound object with a known imaging region is decoded and everything outside the region is set to
    0 (stored uncompressed); ultrasound without a region is refused, since burned-in text cannot be ruled out.
    """
    if "PixelData" in ds:
        _ = ds.PixelData  # read a deferred (large, on-disk) value before copying
    out = copy.deepcopy(ds)
    if mask_pixels and "PixelData" in out and str(out.get("Modality", "")) == "US":
        _mask_dataset_pixels(out)
    out.remove_private_tags()
    _clean(out, pseudonymizer)
    if "PatientID" in ds:
        out.PatientID = pseudonymizer.token(str(ds.PatientID), "patient") if ds.PatientID else ""
    meta = getattr(out, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = pseudonymizer.uid(str(meta.MediaStorageSOPInstanceUID))
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "PS3.15 Basic Profile; keyed HMAC-SHA256 UID pseudonyms"
    codes = [BASIC_PROFILE_CODE] + ([CLEAN_PIXELS_CODE] if mask_pixels and str(out.get("Modality", "")) == "US" else [])
    seq = []
    for value, scheme, meaning in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        seq.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(seq)
    return out


def _clean(ds: Dataset, p: Pseudonymizer) -> None:
    for elem in list(ds):
        tag, kw = elem.tag, elem.keyword
        if tag.group in range(0x5000, 0x5100) or tag.group in range(0x6000, 0x6100) and tag.element in (0x3000, 0x4000):
            del ds[tag]
        elif kw in _ZERO:
            ds[tag] = DataElement(tag, elem.VR, None)
        elif kw in _REMOVE or elem.VR in ("PN", "DA", "DT", "TM"):
            del ds[tag]
        elif elem.VR == "SQ":
            for item in elem.value:
                _clean(item, p)
        elif elem.VR == "UI" and kw not in _KEEP_UID and elem.value:
            vals = elem.value if elem.VM > 1 else [elem.value]
            new = [v if _is_standard_uid(str(v)) else p.uid(str(v)) for v in vals]
            elem.value = new if elem.VM > 1 else new[0]


def _is_standard_uid(v: str) -> bool:
    """A UID registered in the DICOM standard (SOP class, syntax, frame of reference well-known...)."""
    return v.startswith("1.2.840.10008.") and UID(v).name != v


def _mask_dataset_pixels(ds: Dataset) -> None:
    from edge.imaging.dicom import us_region

    region, _ = us_region(ds)
    if region is None:
        raise InputError("ultrasound object has no SequenceOfUltrasoundRegions: burned-in text cannot be masked, "
                         "so it may not leave the device")
    try:
        arr = ds.pixel_array
        pi = str(ds.PhotometricInterpretation).strip()
        if pi.startswith("YBR"):
            pi = "RGB"  # pixel_array converted it
        frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None]
        masked = np.stack([mask_outside_region(f, region) for f in frames])
        masked = masked if masked.shape[0] > 1 else masked[0]
        ds.set_pixel_data(masked, pi, int(ds.BitsStored), generate_instance_uid=False)
    except Exception as e:  # decoding/encoding trouble must stop the export, never let pixels through
        raise InputError(f"cannot mask burned-in text outside the ultrasound region ({type(e).__name__}: {e})") from None
    ds.BurnedInAnnotation = "NO"


def mask_outside_region(pixels: np.ndarray, region: Region, fill: int | float = 0) -> np.ndarray:
    """A copy of ``pixels`` with everything outside ``region`` set to ``fill``."""
    out = np.full_like(pixels, fill)
    y0, y1 = max(0, region.y0), min(pixels.shape[0], region.y1)
    x0, x1 = max(0, region.x0), min(pixels.shape[1], region.x1)
    out[y0:y1, x0:x1] = pixels[y0:y1, x0:x1]
    return out


def exportable_pixels(frame: Frame) -> np.ndarray | None:
    """Pixels of a frame that may leave the device (e.g. an overlay base image), or None.

    Ultrasound is masked outside its imaging region; ultrasound without a known region is withheld, since
    the border may hold the patient's name. Other modalities pass unchanged (burned-in text in CR/DX is
    flagged by the modality and handled by the site's PACS, not by an image we send).
    """
    if frame.modality != "US":
        return frame.pixels
    if frame.region is None:
        return None
    return mask_outside_region(frame.pixels, frame.region)
