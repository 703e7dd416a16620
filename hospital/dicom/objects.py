"""Both objects for one stored finding, and writing them to files.

`build_objects` is what `medge hospital dicom` and the forwarder share: open the sealed origin, build the
SR, and the SC when the finding carries an overlay. `write_objects` writes each as a DICOM file (Part 10,
explicit VR little endian) atomically: temp name, fsync, rename, fsync the folder (`edge.durable_files`).
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from edge.durable_files import write_atomic
from edge.errors import ConfigError
from edge.imaging.relink import Origin
from hospital.dicom.sc import build_sc
from hospital.dicom.sr import build_sr
from hospital.dicom.study import StudyAttributes

log = logging.getLogger("medge.dicom")


def build_objects(finding: dict[str, Any], origin: Origin, study: StudyAttributes) -> list[Dataset]:
    """[SR] or [SR, SC]: the SR first, so a PACS that stops half-way holds the report, not a lone picture."""
    out = [build_sr(finding, origin, study)]
    sc = build_sc(finding, origin, study)
    if sc is not None:
        out.append(sc)
    return out


def kind(ds: Dataset) -> str:
    return "SR" if ds.Modality == "SR" else "SC"


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_objects(finding_id: str, datasets: list[Dataset], out: Path) -> list[Path]:
    """``<out>/<finding id>.sr.dcm`` (and ``.sc.dcm``); the same names again overwrite, as in the PACS."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{out}: cannot create the output folder ({e.strerror})") from None
    paths = []
    for ds in datasets:
        path = out / f"{re.sub(r'[^A-Za-z0-9._-]', '_', finding_id)}.{kind(ds).lower()}.dcm"
        try:
            write_atomic(path, to_bytes(ds))
        except OSError as e:
            raise ConfigError(f"{path}: cannot write ({e.strerror})") from None
        paths.append(path)
    return paths


def dicom_files(db: str, finding_id: str, out: Path, relink_keys: list[Path], pacs: str | None = None,
                calling_aet: str = "MEDGE", timeout_s: float = 30.0) -> list[Path]:
    """`medge hospital dicom`: one stored finding as SR (+ SC) files in ``out``."""
    from edge.errors import InputError
    from hospital.relink import OriginOpener
    from hospital.store import stored_finding

    if not relink_keys:
        raise ConfigError("--relink-key is required: findings carry pseudonyms only, and the original study's UIDs "
                          "open only with the hospital's re-link private key (medge hospital relink-keygen)")
    opener = OriginOpener.load(*relink_keys)
    row = stored_finding(db, finding_id)
    origin = opener.open(row.finding)
    if pacs is None:
        study = StudyAttributes()
        log.warning("finding %s: no --pacs given, so patient and study attributes (PatientID, PatientName, "
                    "AccessionNumber, ...) are left empty; the PACS must reconcile them on import", finding_id)
    else:
        from hospital.dicom.pacs import Pacs, PacsAddress, quiet_pynetdicom

        quiet_pynetdicom()
        address = PacsAddress.parse(pacs)
        with Pacs(address, calling_aet, timeout_s) as p:
            found = p.find_study(origin.study_uid)
        if found is None:
            raise InputError(f"finding {finding_id}: PACS {address} has no study {origin.study_uid}")
        study = found
    return write_objects(finding_id, build_objects(row.finding, origin, study), out)
