"""The patient and study attributes of the objects medge writes: the PACS's, never the device's.

Findings carry pseudonyms only, so these come from the hospital's PACS (a C-FIND on the original
StudyInstanceUID, `hospital.dicom.pacs`). Offline (`medge hospital dicom` without a PACS) they are all
empty: type 2 attributes present without a value, which a PACS reconciles on import.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pydicom.dataset import Dataset

# DICOM keyword -> StudyAttributes field
KEYWORDS = {
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "ReferringPhysicianName": "referring_physician_name",
    "StudyID": "study_id",
}


@dataclass(frozen=True)
class StudyAttributes:
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    referring_physician_name: str | None = None
    study_id: str | None = None
    source: str = "none"  # where they came from: "none" (offline, left empty) or "pacs AET@HOST:PORT"

    @classmethod
    def from_dataset(cls, ds: Dataset, source: str) -> StudyAttributes:
        """From a C-FIND response identifier; empty values stay None."""
        values = {}
        for keyword, name in KEYWORDS.items():
            v = ds.get(keyword)
            values[name] = str(v) if v not in (None, "") else None
        return cls(**values, source=source)

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self) if f.name != "source")
