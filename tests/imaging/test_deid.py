"""Pseudonyms, the Basic Profile on real objects, burned-in text masking, and the quarantine folder."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest
from pydicom.uid import UID

from edge.errors import ConfigError, InputError
from edge.frames import Frame, Region, StudyRef
from edge.imaging.deid import Pseudonymizer, deidentify_dataset, exportable_pixels, mask_outside_region
from edge.imaging.dicom import frames_from_file, read_dicom
from edge.sources.quarantine import REASON_SUFFIX, Quarantine
from tests.support.dicom_files import find


def test_key_created_once_0600_and_stable(tmp_path):
    key = tmp_path / "sub" / "pseudonym.key"
    a = Pseudonymizer.load_or_create(key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32
    assert not [p for p in key.parent.iterdir() if p.name.endswith(".tmp")]
    b = Pseudonymizer.load_or_create(key)
    uid = "1.2.826.0.1.3680043.8.498.12345"
    assert a.uid(uid) == b.uid(uid)
    other = Pseudonymizer.load_or_create(tmp_path / "other.key")
    assert other.uid(uid) != a.uid(uid)  # not recomputable without this device's key


def test_concurrent_first_start_agrees(tmp_path):
    key = tmp_path / "k"
    got = []
    ts = [threading.Thread(target=lambda: got.append(Pseudonymizer.load_or_create(key).uid("1.2.3"))) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(set(got)) == 1


def test_wrong_size_key_is_refused_not_replaced(tmp_path):
    key = tmp_path / "k"
    key.write_bytes(b"short")
    os.chmod(key, 0o600)
    with pytest.raises(ConfigError, match="5 bytes"):
        Pseudonymizer.load_or_create(key)
    assert key.read_bytes() == b"short"


def test_uid_pseudonyms_are_valid_uids(tmp_path):
    p = Pseudonymizer.load_or_create(tmp_path / "k")
    ref = StudyRef(study_uid="1.2.3.4", series_uid="1.2.3.4.5", sop_instance_uid="1.2.3.4.5.6", patient_id="PAT01")
    study, series, inst = p.study_ids(ref)
    for u in (study, series, inst):
        assert UID(u).is_valid and u.startswith("2.25.") and len(u) <= 64
    assert len({study, series, inst}) == 3
    assert p.study_ids(StudyRef(study_uid="1.2.3.4"))[0] == study  # same study -> same pseudonym
    assert "PAT01" not in p.token("PAT01") and len(p.token("PAT01")) == 16


def test_basic_profile_on_real_ultrasound(tmp_path):
    path = find("OBXXXX1A.dcm")  # Philips US with palette, regions, names and dates
    ds = read_dicom(path)
    p = Pseudonymizer.load_or_create(tmp_path / "k")
    out = deidentify_dataset(ds, p)
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.StudyInstanceUID == p.uid(ds.StudyInstanceUID) != ds.StudyInstanceUID
    assert out.SOPInstanceUID == p.uid(ds.SOPInstanceUID) == out.file_meta.MediaStorageSOPInstanceUID
    assert out.SOPClassUID == ds.SOPClassUID
    assert not out.PatientName and out.PatientID == p.token(ds.PatientID, "patient")
    for kw in ("InstitutionName", "AcquisitionTime", "OperatorsName", "SeriesDate"):
        assert kw not in out
    # no person name, date or private element survives anywhere
    for elem in out.iterall():
        assert not elem.tag.is_private
        if elem.VR in ("PN", "DA", "TM", "DT"):
            assert not elem.value, elem
    assert ds.StudyInstanceUID != out.StudyInstanceUID and "PatientIdentityRemoved" not in ds  # original untouched
    # pixels outside the imaging region are gone, inside are kept
    region = Region(120, 60, 800, 519)
    px = out.pixel_array
    assert px[:region.y0].max() == 0 and px[region.y1:].max() == 0
    assert np.array_equal(px[region.y0:region.y1, region.x0:region.x1],
                          ds.pixel_array[region.y0:region.y1, region.x0:region.x1])
    out.save_as(tmp_path / "deid.dcm")
    assert read_dicom(tmp_path / "deid.dcm").PatientIdentityRemoved == "YES"


def test_ultrasound_without_region_is_not_exported(tmp_path):
    ds = read_dicom(find("US1_UNCR.dcm"))  # GE US, no SequenceOfUltrasoundRegions
    with pytest.raises(InputError, match="burned-in text"):
        deidentify_dataset(ds, Pseudonymizer(b"k" * 32))
    f = next(frames_from_file(find("US1_UNCR.dcm"), "t"))
    assert exportable_pixels(f) is None


def test_mask_outside_region_on_cine_frame():
    f = next(frames_from_file(find("color3d_jpeg_baseline.dcm"), "t"))
    m = exportable_pixels(f)
    r = f.region
    assert m.shape == f.pixels.shape and m.dtype == f.pixels.dtype
    assert m[: r.y0].max() == 0 and m[:, : r.x0].max() == 0 and m[r.y1:].max() == 0 and m[:, r.x1:].max() == 0
    assert np.array_equal(m[r.y0:r.y1, r.x0:r.x1], f.pixels[r.y0:r.y1, r.x0:r.x1])
    gray = Frame(pixels=np.ones((10, 10), np.float32), modality="CR", source="t")
    assert exportable_pixels(gray) is gray.pixels
    assert mask_outside_region(gray.pixels, Region(2, 3, 5, 9)).sum() == 3 * 6


def test_quarantine_moves_file_with_reason(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    bad = inbox / "x.dcm"
    bad.write_bytes(b"junk")
    q = Quarantine(tmp_path / "q")
    rec = q.put(bad, "x.dcm: not a DICOM file\n(no preamble)", source="folder")
    assert not bad.exists() and rec.path.read_bytes() == b"junk"
    side = rec.path.with_name(rec.path.name + REASON_SUFFIX)
    assert side.read_text().splitlines()[0] == "x.dcm: not a DICOM file (no preamble)"
    assert q.count == 1 and [r.reason for r in q.list()] == ["x.dcm: not a DICOM file (no preamble)"]


def test_basic_profile_on_cr_keeps_pixels_and_replaces_every_instance_uid(tmp_path):
    ds = read_dicom(find("RG1_UNCR.dcm"))  # Philips CR
    p = Pseudonymizer(b"\x01" * 32)
    out = deidentify_dataset(ds, p)
    assert np.array_equal(out.pixel_array, ds.pixel_array)  # not ultrasound: no masking, no re-encoding
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    originals = {str(e.value) for e in ds.iterall() if e.VR == "UI" and e.value}
    for e in out.iterall():
        if e.VR == "UI" and e.value and e.keyword not in ("SOPClassUID", "ReferencedSOPClassUID"):
            v = str(e.value)
            assert v.startswith("2.25.") or v.startswith("1.2.840.10008."), (e.keyword, v)
            assert v not in originals or v.startswith("1.2.840.10008."), e.keyword
    assert deidentify_dataset(ds, p).SeriesInstanceUID == out.SeriesInstanceUID  # stable
