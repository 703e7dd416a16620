"""`medge hospital forward` against a real Orthanc on 127.0.0.1: SR and SC arrive in the original study,
carry the PACS's patient attributes, survive a PACS outage and arrive exactly once."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from hospital.dicom.uids import sr_instance_uid
from tests.support import ROOT
from tests.support.dicom_findings import ORIGINAL, make_finding, make_keys, original_origin, store_findings
from tests.support.orthanc import Orthanc

FID = "0b6f3b7e-1111-5222-8333-444455556666"
FID2 = "1c7f4c8f-2222-5333-8444-555566667777"


def _medge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def pacs(tmp_path):
    with Orthanc(tmp_path) as o:
        yield o


def _forward_once(db, pacs, keys, *extra: str) -> subprocess.CompletedProcess:
    return _medge("hospital", "forward", "--db", str(db), "--pacs", pacs.address, "--relink-key", str(keys.private),
                  "--once", "--timeout", "5", *extra)


def _queue(db) -> dict[str, tuple]:
    with sqlite3.connect(f"{db}.forward.sqlite3") as con:
        return {r[0]: r[1:] for r in con.execute("SELECT finding_id, state, attempts, last_error FROM queue")}


def _study_instances(pacs: Orthanc, study_uid: str) -> dict[str, list[str]]:
    """SOP Instance UIDs in the study by modality, from Orthanc's REST API."""
    out: dict[str, list[str]] = {}
    for inst in pacs.find("Instance", StudyInstanceUID=study_uid):
        series = pacs.get(f"/series/{inst['ParentSeries']}")
        out.setdefault(series["MainDicomTags"]["Modality"], []).append(inst["MainDicomTags"]["SOPInstanceUID"])
    return out


def test_forward_stores_sr_and_sc_in_the_original_study(pacs, tmp_path):
    keys = make_keys(tmp_path)
    origin = original_origin()
    pacs.upload(ORIGINAL)
    db = tmp_path / "hospital.sqlite3"
    store_findings(db, [make_finding(FID, origin, keys), make_finding(FID2, origin, keys, coded=False, overlay=False)])

    r = _forward_once(db, pacs, keys)
    assert r.returncode == 0, r.stderr
    assert f"finding {FID}: SR " in r.stderr and " and SC " in r.stderr and "forward: 2 done, 0 pending, 0 failed" in r.stderr
    assert {k: v[0] for k, v in _queue(db).items()} == {FID: "done", FID2: "done"}
    got = _study_instances(pacs, origin.study_uid)
    assert sorted(got) == ["CR", "OT", "SR"] and len(got["SR"]) == 2 and len(got["OT"]) == 1

    # queryable by the original StudyInstanceUID over DICOM too (C-FIND, image level)
    ae = AE(ae_title="MEDGE")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    host, port = pacs.address.split("@")[1].split(":")
    assoc = ae.associate(host, int(port), ae_title="ORTHANC")
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel, q.StudyInstanceUID, q.SeriesInstanceUID, q.SOPInstanceUID, q.Modality = "IMAGE", origin.study_uid, "", "", ""
    found = [ident.SOPInstanceUID for st, ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)
             if st.Status in (0xFF00, 0xFF01)]
    assoc.release()
    assert len(found) == 4 and origin.sop_instance_uid in found

    # the SR as the PACS holds it: the PACS's patient, the finding's code, confidence and algorithm
    (sr_id,) = [i["ID"] for i in pacs.find("Instance", StudyInstanceUID=origin.study_uid)
                if i["MainDicomTags"]["SOPInstanceUID"] == sr_instance_uid(FID)]
    path = tmp_path / "from-pacs.sr.dcm"
    path.write_bytes(pacs.download(f"/instances/{sr_id}/file"))
    d = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, timeout=60)
    assert d.returncode == 0 and "(27925004,SCT,\"Nodule\")" in d.stdout, d.stderr
    sr = hd.sr.srread(path)
    original = pydicom.dcmread(ORIGINAL, stop_before_pixels=True)
    assert sr.PatientID == original.PatientID and str(sr.PatientName) == str(original.PatientName)
    assert sr.AccessionNumber == original.AccessionNumber and sr.StudyDate == original.StudyDate
    (image,) = sr.content.get_image_measurement_groups()
    assert image.finding_type.value == "27925004"
    assert {m.name.meaning: m.value for m in image.get_measurements()}["Certainty of Finding"] == 87.0
    assert any(getattr(i, "TextValue", None) == "cxr-nodule" for i in image[0].ContentSequence)

    # the offline command can take the patient attributes from the PACS too
    r = _medge("hospital", "dicom", "--db", str(db), "--finding", FID, "--out", str(tmp_path / "files"),
               "--relink-key", str(keys.private), "--pacs", pacs.address)
    assert r.returncode == 0, r.stderr
    assert pydicom.dcmread(r.stdout.split()[0]).PatientID == original.PatientID and "left empty" not in r.stderr

    # again: nothing to do; a lost queue (everything resent) stores nothing twice
    r = _forward_once(db, pacs, keys)
    assert r.returncode == 0 and "this run: 0 queued, 0 stored" in r.stderr, r.stderr
    for p in tmp_path.glob("hospital.sqlite3.forward.sqlite3*"):
        p.unlink()
    r = _forward_once(db, pacs, keys)
    assert r.returncode == 0 and "2 stored" in r.stderr, r.stderr
    again = _study_instances(pacs, origin.study_uid)
    assert {k: sorted(v) for k, v in again.items()} == {k: sorted(v) for k, v in got.items()}


def test_pacs_down_loses_nothing_and_everything_arrives_once(pacs, tmp_path):
    keys = make_keys(tmp_path)
    origin = original_origin()
    pacs.upload(ORIGINAL)
    db = tmp_path / "hospital.sqlite3"
    store_findings(db, [make_finding(FID, origin, keys), make_finding(FID2, origin, keys, overlay=False)])
    pacs.stop()

    r = _forward_once(db, pacs, keys)
    assert r.returncode == 1
    assert f"finding {FID}: PACS {pacs.address}: cannot be reached" in r.stderr, r.stderr
    q = _queue(db)
    assert {k: v[0] for k, v in q.items()} == {FID: "pending", FID2: "pending"}  # nothing marked done
    assert "cannot be reached" in q[FID][2]
    assert "Traceback" not in r.stderr

    pacs.start()  # same ports, same storage
    r = _forward_once(db, pacs, keys)
    assert r.returncode == 0, r.stderr
    assert {k: v[0] for k, v in _queue(db).items()} == {FID: "done", FID2: "done"}
    got = _study_instances(pacs, origin.study_uid)
    assert len(got["CR"]) == 1 and len(got["SR"]) == 2 and len(got["OT"]) == 1  # exactly once each


def test_study_not_in_pacs_yet_is_retried_not_written_without_patient(pacs, tmp_path):
    keys = make_keys(tmp_path)
    origin = original_origin()
    db = tmp_path / "hospital.sqlite3"
    store_findings(db, [make_finding(FID, origin, keys), make_finding("2d8a5d9a-3333-5444-8555-666677778888", None, None)])

    r = _forward_once(db, pacs, keys)
    assert r.returncode == 1
    assert f"finding {FID}: PACS {pacs.address} has no study {origin.study_uid} yet" in r.stderr, r.stderr
    assert "finding 2d8a5d9a-3333-5444-8555-666677778888: carries no sealed origin" in r.stderr
    q = _queue(db)
    assert q[FID][0] == "pending" and q["2d8a5d9a-3333-5444-8555-666677778888"][0] == "failed"
    assert pacs.find("Instance", StudyInstanceUID=origin.study_uid) == []

    pacs.upload(ORIGINAL)  # the modality's images arrive
    r = _forward_once(db, pacs, keys)
    assert r.returncode == 1  # the finding without an origin stays failed
    assert _queue(db)[FID][0] == "done"
    assert len(_study_instances(pacs, origin.study_uid)["SR"]) == 1


def test_forwarder_follows_the_store_until_stopped(pacs, tmp_path):
    keys = make_keys(tmp_path)
    origin = original_origin()
    pacs.upload(ORIGINAL)
    db = tmp_path / "hospital.sqlite3"
    store_findings(db, [make_finding(FID, origin, keys)])
    proc = subprocess.Popen([sys.executable, "-m", "edge.cli", "hospital", "forward", "--db", str(db), "--pacs",
                             pacs.address, "--relink-key", str(keys.private), "--timeout", "5", "--max-seconds", "60"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def srs() -> int:
            return len(_study_instances(pacs, origin.study_uid).get("SR", []))

        end = time.monotonic() + 30
        while srs() < 1 and time.monotonic() < end:
            time.sleep(0.2)
        assert srs() == 1
        store_findings(db, [make_finding(FID2, origin, keys)])  # the receiver stores another one
        end = time.monotonic() + 30
        while srs() < 2 and time.monotonic() < end:
            time.sleep(0.2)
        assert srs() == 2
        line = _medge("hospital", "forward", "--db", str(db), "--pacs", pacs.address, "--relink-key", str(keys.private),
                      "--once")
        assert line.returncode == 2 and "another medge hospital forward is using this queue" in line.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "forward: 2 done, 0 pending, 0 failed" in err


def test_forward_refusals_are_one_line(tmp_path):
    keys = make_keys(tmp_path)
    db = tmp_path / "hospital.sqlite3"
    store_findings(db, [])
    for args, part in [((), "--relink-key is required"),
                       (("--relink-key", str(tmp_path / "nope.key")), "cannot read the re-link private key"),
                       (("--relink-key", str(keys.private), "--pacs", "orthanc-no-port"), "expected AET@HOST:PORT")]:
        cmd = ["hospital", "forward", "--db", str(db), "--once", *args]
        if "--pacs" not in args:
            cmd += ["--pacs", "ORTHANC@127.0.0.1:9"]
        r = _medge(*cmd)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("medge: error: ") and part in lines[0], r.stderr


def test_forwarder_follows_a_postgresql_store_and_looks_back_for_findings_committed_behind_its_cursor(
        pacs, pg_url, tmp_path):
    """On PostgreSQL the cursor is received_at, which a receiver stamps before its batch commits: a finding
    another receiver commits later can sit behind the cursor, and the look-back must still queue it."""
    from hospital.dicom.forwarder import ForwardConfig, Forwarder, ForwardError
    from hospital.dicom.pacs import PacsAddress

    keys = make_keys(tmp_path)
    origin = original_origin()
    pacs.upload(ORIGINAL)
    r = _medge("hospital", "forward", "--db", pg_url, "--pacs", pacs.address, "--relink-key", str(keys.private), "--once")
    assert r.returncode == 2 and "name the forwarder's own queue file with --queue" in r.stderr
    assert "Traceback" not in r.stderr

    store_findings(pg_url, [make_finding(FID, origin, keys)], received_at="2026-12-01T10:00:05.000Z")
    queue = tmp_path / "forward.sqlite3"
    cfg = ForwardConfig(db=pg_url, pacs=PacsAddress.parse(pacs.address), relink_keys=[keys.private], queue=queue,
                        timeout_s=5, look_back_every_s=3600)
    fw = Forwarder(cfg)
    try:
        assert fw.run_pass() and fw.queue.counts()["done"] == 1
        # another receiver commits a finding it took in earlier: behind the cursor
        store_findings(pg_url, [make_finding(FID2, origin, keys)], received_at="2026-12-01T10:00:02.000Z")
        assert fw.run_pass() and fw.queue.row(FID2) is None  # the incremental read cannot see it
        fw.cfg.look_back_every_s = 0
        assert fw.run_pass() and fw.queue.row(FID2)["state"] == "done"
        assert fw.run_pass() and fw.queue.counts() == {"pending": 0, "done": 2, "failed": 0}  # each once
    finally:
        fw.close()
    assert len(_study_instances(pacs, origin.study_uid)["SR"]) == 2

    other = tmp_path / "other.sqlite3"  # the same queue file pointed at another receiver database
    store_findings(other, [])
    with pytest.raises(ForwardError, match="this queue follows postgresql://"):
        Forwarder(ForwardConfig(db=str(other), pacs=PacsAddress.parse(pacs.address), relink_keys=[keys.private],
                                queue=queue))
