"""The C-STORE receiver with real senders: pynetdicom's SCU and dcmtk's storescu, on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage

from edge.config import SourceConfig
from edge.imaging.dicom import read_dicom
from edge.sources import SourceContext, build_source
from edge.sources.quarantine import REASON_SUFFIX
from tests.support.dicom_files import find
from tests.support.sources import Runner


def store_source(tmp_path: Path):
    cfg = SourceConfig(name="xray", kind="dicom-store", model="m", ae_title="MEDGE", bind="127.0.0.1", port=0,
                       allowed_aes=("MODALITY1", "STORESCU"), poll_interval_s=0.1)
    src = build_source(cfg, SourceContext(data_dir=tmp_path / "data"))
    src.start()
    return src


def send(ds, port: int, aet: str = "MODALITY1"):
    ae = AE(ae_title=aet)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGE")
    if not assoc.is_established:
        return assoc, None
    status = assoc.send_c_store(ds)
    assoc.release()
    return assoc, status


def dcmtk_storescu() -> str:
    for cand in (shutil.which("storescu"), "/usr/bin/storescu"):
        if cand and Path(cand).is_file():
            out = subprocess.run([cand, "--version"], capture_output=True, text=True, timeout=10)
            if "dcmtk" in (out.stdout + out.stderr).lower():
                return cand
    pytest.skip("dcmtk storescu not installed (apt package dcmtk)")


def test_pynetdicom_scu_object_is_durable_before_success_then_becomes_frame(tmp_path):
    src = store_source(tmp_path)
    try:
        ds = read_dicom(find("RG3_J2KR.dcm"))  # Fuji CR, JPEG 2000 lossless, kept compressed on the wire
        _, status = send(ds, src.port)
        assert status.Status == 0x0000
        stored = src.incoming / f"{ds.SOPInstanceUID}.dcm"
        assert stored.is_file()  # on disk when Success was answered, before any frame was read
        assert read_dicom(stored).SOPInstanceUID == ds.SOPInstanceUID
        r = Runner(src)
        assert r.wait_for(lambda: len(r.frames) == 1 and not stored.exists())
        r.finish()
        f = r.frames[0]
        assert f.modality == "CR" and f.study.sop_instance_uid == ds.SOPInstanceUID and f.pixels.shape == (1760, 1760)
        assert (tmp_path / "data" / "processed" / "xray" / stored.name).is_file()
    finally:
        src.close()


def test_dcmtk_storescu_multiframe_cine(tmp_path):
    exe = dcmtk_storescu()
    src = store_source(tmp_path)
    try:
        r = Runner(src)
        path = find("examples_ybr_color.dcm")
        # -xy: also propose JPEG baseline, the file's own syntax (dcmtk proposes uncompressed only by default)
        out = subprocess.run([exe, "-xy", "-aet", "STORESCU", "-aec", "MEDGE", "127.0.0.1", str(src.port), str(path)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert r.wait_for(lambda: len(r.frames) == 30)
        r.finish()
        assert {f.study.sop_instance_uid for f in r.frames} == {read_dicom(path).SOPInstanceUID}
        assert r.frames[0].frame_rate == pytest.approx(30.0, rel=1e-3) and r.frames[0].region is not None
    finally:
        src.close()


def test_unknown_calling_ae_is_rejected_at_association(tmp_path):
    src = store_source(tmp_path)
    try:
        ds = read_dicom(find("US1_UNCR.dcm"))
        assoc, status = send(ds, src.port, aet="INTRUDER")
        assert assoc.is_rejected and status is None
        rj = assoc.acceptor.primitive  # A-ASSOCIATE-RJ: permanent, by the service user, calling AE not recognised
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
        assert list(src.incoming.iterdir()) == []
        assert src.rejected_associations == 1 and "INTRUDER" in src.stats.last_error
        exe = shutil.which("storescu")
        if exe:
            try:
                exe = dcmtk_storescu()
            except pytest.skip.Exception:
                exe = None
        if exe:
            out = subprocess.run([exe, "-aet", "NOBODY", "-aec", "MEDGE", "127.0.0.1", str(src.port),
                                  str(find("US1_UNCR.dcm"))], capture_output=True, text=True, timeout=30)
            assert out.returncode != 0 and "reject" in (out.stdout + out.stderr).lower()
        assert list(src.incoming.iterdir()) == []
    finally:
        src.close()


def test_bad_object_is_stored_then_quarantined_and_receiver_keeps_going(tmp_path):
    src = store_source(tmp_path)
    try:
        r = Runner(src)
        bad = read_dicom(find("US1_UNCR.dcm"))
        bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]  # wrong pixel data length
        _, status = send(bad, src.port)
        assert status.Status == 0x0000  # durably received; refusing it is the pipeline's job, with a reason
        assert r.wait_for(lambda: src.stats.quarantined == 1)
        good = read_dicom(find("US1_UNCR.dcm"))
        _, status = send(good, src.port)
        assert status.Status == 0x0000
        assert r.wait_for(lambda: len(r.frames) == 1)
        r.finish()
        (side,) = (tmp_path / "data" / "quarantine").glob("*" + REASON_SUFFIX)
        assert "wrong pixel data length" in side.read_text()
        assert bad.SOPClassUID == UltrasoundImageStorage
    finally:
        src.close()


def test_write_failure_answers_out_of_resources(tmp_path):
    src = store_source(tmp_path)
    try:
        shutil.rmtree(src.incoming)
        src.incoming.write_text("a file where the folder should be")  # every write now fails
        ds = read_dicom(find("examples_ybr_color.dcm"))
        assert ds.SOPClassUID == UltrasoundMultiFrameImageStorage
        _, status = send(ds, src.port)
        assert status.Status == 0xA700
        assert "0xA700" in src.stats.last_error
    finally:
        src.close()


def test_objects_left_in_incoming_are_processed_after_restart(tmp_path):
    src = store_source(tmp_path)
    ds = read_dicom(find("US1_UNCR.dcm"))
    try:
        _, status = send(ds, src.port)
        assert status.Status == 0x0000
    finally:
        src.close()  # "crash" before any frame was processed
    src2 = store_source(tmp_path)
    try:
        r = Runner(src2)
        assert r.wait_for(lambda: len(r.frames) == 1)
        r.finish()
        assert r.frames[0].study.sop_instance_uid == ds.SOPInstanceUID
    finally:
        src2.close()
