"""`medge run` as an operator meets it: a profile, studies dropped in, a process to start, signal and read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.support import ROOT


def notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.2)
    return s, path


def drain_notifications(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out += sock.recv(4096).decode().splitlines()
        except (TimeoutError, BlockingIOError):
            return out


def write_profile(tmp_path: Path, key_path: Path | None, bundle: Path, sources: list[dict], sync: dict | None = None,
             **pipeline) -> Path:
    prof = {
        "schema_version": 1,
        "device": {"id": "test-cart", "site": "lab"},
        "data_dir": str(tmp_path / "data"),
        "trusted_keys": [str(key_path)] if key_path else [],
        "log_level": "info",
        "models": [{"name": "seg", "bundle": str(bundle), "providers": ["tensorrt", "cpu"], "intra_op_threads": 1,
                    "warmup_runs": 1, "require_signature": key_path is not None}],
        "sources": sources,
        "pipeline": {"queue_depth": 2, "metrics_interval_s": 0.5, "on_frames": 2, "off_frames": 3,
                     "smoothing_window": 3, **pipeline},
        "sync": sync or {"enabled": False},
    }
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(prof))
    return p


CINE = "color3d_jpeg_baseline.dcm"  # SonoSite, 120-frame JPEG cine from pydicom-data


def write_studies(folder: Path, n: int) -> dict[str, str]:
    """n copies of the real cine as distinct studies; returns file name -> SOP Instance UID."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    src = pydicom.dcmread(get_testdata_file(CINE))
    out = {}
    for i in range(n):
        src.StudyInstanceUID, src.SeriesInstanceUID = generate_uid(), generate_uid()
        src.SOPInstanceUID = src.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        tmp = folder / f"study{i}.dcm.part"
        src.save_as(tmp)
        os.replace(tmp, folder / f"study{i}.dcm")
        out[f"study{i}.dcm"] = str(src.SOPInstanceUID)
    return out


def deliver(studies: Path, incoming: Path) -> None:
    """Copy then rename, as a modality console's transfer would finish."""
    import shutil

    incoming.mkdir(parents=True, exist_ok=True)
    for p in sorted(studies.glob("*.dcm")):
        shutil.copyfile(p, incoming / (p.name + ".part"))
        os.replace(incoming / (p.name + ".part"), incoming / p.name)


def outbox_rows(path: Path) -> dict[str, dict]:
    import sqlite3

    with sqlite3.connect(path) as db:
        return {fid: json.loads(p) for fid, p in db.execute("SELECT finding_id, payload FROM findings")}


def start_daemon(profile: Path, notify_path: str | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    if notify_path:
        env["NOTIFY_SOCKET"] = notify_path
        env["WATCHDOG_USEC"] = "1000000"
    return subprocess.Popen([sys.executable, "-m", "edge.cli", "run", "--config", str(profile)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_daemon(cond, timeout: float, proc: subprocess.Popen | None = None) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"medge run exited early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def stop_daemon(proc: subprocess.Popen, timeout: float = 60) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def inbox_source(drop: Path) -> dict:
    return {"name": "inbox", "kind": "dicom-folder", "path": str(drop), "model": "seg", "settle_s": 0,
            "poll_interval_s": 0.05}


def store_source(port: int) -> dict:
    return {"name": "xray", "kind": "dicom-store", "model": "seg", "port": port, "allowed_aes": ["XRAY1"],
            "poll_interval_s": 0.05}


def start_listening(prof: Path, data: Path) -> subprocess.Popen:
    """`medge run` with a dicom-store source, once its C-STORE port is up."""
    proc = start_daemon(prof)
    wait_daemon(lambda: (data / "incoming" / "xray").is_dir(), 60, proc)
    time.sleep(0.3)
    return proc


def drop_file(src: Path, folder: Path) -> None:
    """Copy then rename, as a console's transfer would finish."""
    folder.mkdir(exist_ok=True)
    shutil.copyfile(src, folder / (src.name + ".part"))
    os.replace(folder / (src.name + ".part"), folder / src.name)


def send_raw(path: Path, port: int) -> int:
    """C-STORE the file's bytes as they are (pynetdicom's chunked sending does not re-encode)."""
    from pynetdicom import AE, _config
    from pynetdicom.presentation import build_context

    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        import pydicom

        meta = pydicom.filereader.read_file_meta_info(path)
        ae = AE(ae_title="XRAY1")
        ae.requested_contexts = [build_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)]
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDGE")
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
        return int(status.Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
