"""Issue 14's end-to-end path: the demo's findings travel device -> broker -> receiver, and the forwarder files
each as an SR (+ its overlay as SC) in its *original* study in a real Orthanc, which is down for part of the
run: nothing is lost, nothing arrives twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pydicom
import pytest

from tests.support import ROOT
from tests.support.mqtt_broker import free_port, mosquitto_path, wait_port
from tests.support.orthanc import Orthanc

SAMPLES = ROOT / "models" / "samples"


def _medge(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_demo_findings_reach_the_pacs_as_sr_and_sc_in_their_original_studies(tmp_path):
    pytest.importorskip("highdicom")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    url, db = f"mqtt://127.0.0.1:{port}", tmp_path / "hospital.sqlite3"
    env = {**os.environ, "HOME": str(tmp_path)}  # the demo's data folder lands under this HOME
    mq = subprocess.Popen([mosquitto_path(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rx = None
    try:
        wait_port("127.0.0.1", port)
        rx = subprocess.Popen([sys.executable, "-m", "edge.cli", "receive", "--broker", url, "--db", str(db)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        r = _medge("demo", "--broker", url, env=env)
        assert r.returncode == 0 and "2 of 2 acknowledged by the hospital" in r.stdout, r.stdout + r.stderr
        assert "overlays: 2 PNG(s) in" in r.stdout
    finally:
        if rx is not None:
            rx.terminate()
            rx.wait(30)
        mq.terminate()
        mq.wait(10)
    key = tmp_path / ".local/share/medge/demo/hospital/relink.key"
    rows = json.loads(_medge("hospital", "findings", "list", "--db", str(db), "--json", env=env).stdout)
    assert len(rows) == 2
    originals = {str(pydicom.dcmread(SAMPLES / f, stop_before_pixels=True).StudyInstanceUID): f
                 for f in ("us_cine.dcm", "cxr_opacity.dcm")}
    for row in rows:  # what the broker and the receiver saw names neither original study
        assert not any(uid in json.dumps(row) for uid in originals)

    with Orthanc(tmp_path / "pacs") as pacs:
        for f in originals.values():
            pacs.upload(SAMPLES / f)  # the original studies, as the modality sent them to the PACS
        pacs.stop()  # the PACS goes down before the forwarder runs
        fwd = ("hospital", "forward", "--db", str(db), "--pacs", pacs.address, "--relink-key", str(key), "--once",
               "--timeout", "3")
        down = _medge(*fwd, env=env)
        assert down.returncode == 1 and "0 done, 2 pending" in down.stderr, down.stderr
        pacs.start()  # back, same port and storage
        up = _medge(*fwd, env=env)
        assert up.returncode == 0 and "2 done, 0 pending, 0 failed" in up.stderr, up.stderr
        again = _medge(*fwd, env=env)
        assert again.returncode == 0
        for study_uid, f in originals.items():
            by_modality: dict[str, list[str]] = {}
            for inst in pacs.find("Instance", StudyInstanceUID=study_uid):
                series = pacs.get(f"/series/{inst['ParentSeries']}")
                by_modality.setdefault(series["MainDicomTags"]["Modality"], []).append(inst["ID"])
            # the original image, one SR and one SC (the overlay): exactly once, after an outage and a rerun
            assert {m: len(v) for m, v in by_modality.items()} == {"US" if f.startswith("us") else "CR": 1,
                                                                    "SR": 1, "OT": 1}, (f, by_modality)
            sr = tmp_path / f"{f}.sr.dcm"
            sr.write_bytes(pacs.download(f"/instances/{by_modality['SR'][0]}/file"))
            d = subprocess.run(["dsrdump", str(sr)], capture_output=True, text=True, timeout=60)
            assert d.returncode == 0 and "Imaging Measurement Report" in d.stdout, d.stdout + d.stderr
            ds = pydicom.dcmread(sr)
            evidence = ds.CurrentRequestedProcedureEvidenceSequence[0]
            assert evidence.StudyInstanceUID == study_uid == ds.StudyInstanceUID
            if f.startswith("cxr"):  # the classifier's explanation peak travels as a point on the original image
                assert "POINT" in d.stdout and "Lesion" in d.stdout
