"""`medge hospital dicom`: a stored finding as a TID 1500 SR and its overlay as a Secondary Capture, in the
original study, read back by dcmtk (dsrdump), highdicom and pydicom; and the one-line refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys

import highdicom as hd
import pydicom
import pytest

from tests.support import ROOT
from tests.support.dicom_findings import make_finding, make_keys, original_origin, store_findings

FID = "0b6f3b7e-1111-5222-8333-444455556666"


def _medge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture
def stored(tmp_path):
    keys = make_keys(tmp_path)
    db = tmp_path / "hospital.sqlite3"
    store_findings(db, [make_finding(FID, original_origin(), keys),
                        make_finding("1c7f4c8f-2222-5333-8444-555566667777", original_origin(), keys, coded=False,
                                     overlay=False, needs_review=False),
                        make_finding("2d8a5d9a-3333-5444-8555-666677778888", None, None)])
    return db, keys


def test_sr_and_sc_reference_the_original_study(stored, tmp_path):
    db, keys = stored
    origin = original_origin()
    out = tmp_path / "out"
    r = _medge("hospital", "dicom", "--db", str(db), "--finding", FID, "--out", str(out), "--relink-key", str(keys.private))
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert [p.rsplit("/", 1)[-1] for p in paths] == [f"{FID}.sr.dcm", f"{FID}.sc.dcm"]
    assert "patient and study attributes" in r.stderr and "left empty" in r.stderr  # offline: said in a log line
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left

    # dcmtk parses the SR and shows the content tree
    if shutil.which("dsrdump"):
        d = subprocess.run(["dsrdump", paths[0]], capture_output=True, text=True, timeout=60)
        assert d.returncode == 0, d.stderr
        for part in ("Imaging Measurement Report", "(27925004,SCT,\"Nodule\")", "Certainty of Finding", "\"87.0\" (%,UCUM",
                     "Algorithm Name", "cxr-nodule", "Algorithm Version", "\"1.2.0\"", "Artificial Intelligence",
                     "PRELIMINARY", "UNVERIFIED", "not a diagnosis", "SCOORD", "POLYLINE"):
            assert part in d.stdout, part

    sr = hd.sr.srread(paths[0])
    assert sr.StudyInstanceUID == origin.study_uid and sr.Modality == "SR"
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert "not a diagnosis" in sr.SeriesDescription
    assert sr.PatientID in (None, "") and "PatientName" in sr  # type 2: present, empty without a PACS
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == origin.study_uid
    ref = evidence.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == origin.series_uid
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == origin.sop_instance_uid
    (image,) = sr.content.get_image_measurement_groups()
    assert (image.finding_type.value, image.finding_type.scheme_designator, image.finding_type.meaning) == \
        ("27925004", "SCT", "Nodule")
    m = {x.name.meaning: (x.value, x.unit.value) for x in image.get_measurements()}
    assert m["Certainty of Finding"] == (87.0, "%")
    assert m["Area"] == (312.5, "mm2") and m["Width"] == (36.9, "mm") and m["Height"] == (29.6, "mm")
    assert m["Number of similar findings"] == (2.0, "1")
    q = {x.name.meaning: x.value.meaning for x in image.get_qualitative_evaluations()}
    assert q["Needs review by a clinician"] == "Yes"
    assert image.source_images[0].referenced_sop_instance_uid == origin.sop_instance_uid
    algorithm = {item.ConceptNameCodeSequence[0].CodeMeaning: getattr(item, "TextValue", None)
                 for item in image[0].ContentSequence if item.ValueType == "TEXT"}
    assert algorithm["Algorithm Name"] == "cxr-nodule" and algorithm["Algorithm Version"] == "1.2.0"
    params = [i.TextValue for i in image[0].ContentSequence
              if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
    assert f"sha256={'ab' * 32}" in params and "variant=int8" in params
    comments = [i.TextValue for i in image[0].ContentSequence
                if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"]
    assert any("not a diagnosis" in c for c in comments)
    assert any(c.startswith("needs review: uncertain") for c in comments)

    regions = sr.content.get_planar_roi_measurement_groups()
    assert len(regions) == 3  # one contour, two boxes
    contour, box1, _ = regions
    assert contour.roi.GraphicType == "POLYLINE" and contour.roi.value.tolist()[0] == contour.roi.value.tolist()[-1]
    assert box1.roi.value.tolist() == [[100, 100], [150, 100], [150, 140], [100, 140], [100, 100]]
    assert box1.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == origin.sop_instance_uid
    assert {x.name.meaning: x.value for x in box1.get_measurements()}["Certainty of Finding"] == 91.0

    sc = pydicom.dcmread(paths[1])
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == origin.study_uid and sc.SeriesInstanceUID != sr.SeriesInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "YES"
    px = sc.pixel_array
    assert px.shape == (80, 96, 3) and px[0, 0].tolist() == [255, 0, 0] and px[0, -1].tolist() == [0, 0, 255]
    assert "not a diagnosis" in sc.ImageComments
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == origin.sop_instance_uid

    # the same finding again: the same SOP Instance UIDs (a resend overwrites, never duplicates)
    out2 = tmp_path / "again"
    r = _medge("hospital", "dicom", "--db", str(db), "--finding", FID, "--out", str(out2), "--relink-key", str(keys.private))
    assert r.returncode == 0, r.stderr
    assert pydicom.dcmread(out2 / f"{FID}.sr.dcm").SOPInstanceUID == sr.SOPInstanceUID
    assert pydicom.dcmread(out2 / f"{FID}.sc.dcm").SOPInstanceUID == sc.SOPInstanceUID


def test_label_without_code_gets_the_private_code_and_no_overlay_no_sc(stored, tmp_path):
    db, keys = stored
    fid = "1c7f4c8f-2222-5333-8444-555566667777"
    r = _medge("hospital", "dicom", "--db", str(db), "--finding", fid, "--out", str(tmp_path / "o"),
               "--relink-key", str(keys.private))
    assert r.returncode == 0, r.stderr
    (path,) = r.stdout.split()
    sr = hd.sr.srread(path)
    (image,) = sr.content.get_image_measurement_groups()
    ft = image.finding_type
    assert (ft.value, ft.scheme_designator, ft.meaning) == ("nodule", "99MEDGE", "nodule")
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99MEDGE"
    assert {x.name.meaning: x.value.meaning for x in image.get_qualitative_evaluations()}["Needs review by a clinician"] == "No"


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("medge: error: "), r.stderr
    return lines[0]


def test_refusals_are_one_line(stored, tmp_path):
    db, keys = stored
    out = tmp_path / "o"
    base = ("hospital", "dicom", "--db", str(db), "--out", str(out))
    line = _one_line_error(_medge(*base, "--finding", "no-such-id", "--relink-key", str(keys.private)))
    assert "finding no-such-id: not in" in line
    line = _one_line_error(_medge(*base, "--finding", FID))
    assert "--relink-key is required" in line
    line = _one_line_error(_medge(*base, "--finding", FID, "--relink-key", str(tmp_path / "missing.key")))
    assert "missing.key" in line and "cannot read the re-link private key" in line
    other = make_keys(tmp_path, "other")
    line = _one_line_error(_medge(*base, "--finding", FID, "--relink-key", str(other.private)))
    assert f"finding {FID}:" in line and "not among the loaded keys" in line
    line = _one_line_error(_medge(*base, "--finding", "2d8a5d9a-3333-5444-8555-666677778888", "--relink-key",
                                  str(keys.private)))
    assert "carries no sealed origin" in line
    assert not out.exists() or not list(out.iterdir())
