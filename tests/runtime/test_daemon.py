"""The daemon as an operator meets it: `medge run` in a subprocess, sd_notify, SIGTERM drain, restart
without duplicates, `medge doctor`, `medge replay`, `medge demo`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.commands.doctor import check_broker, run_doctor
from edge.runtime.sdnotify import Notifier
from tests.support import ROOT
from tests.support.bundles import write_bundle, write_public_key
from tests.support.daemon import (
    CINE,
    deliver,
    drain_notifications,
    notify_socket,
    outbox_rows,
    start_daemon,
    stop_daemon,
    wait_daemon,
    write_profile,
    write_studies,
)


def test_notifier_speaks_the_systemd_datagram_protocol(tmp_path):
    sock, path = notify_socket(tmp_path)
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_s == 4.0
    assert n.ready("running 1 source(s)") and n.watchdog() and n.stopping()
    assert drain_notifications(sock) == ["READY=1", "STATUS=running 1 source(s)", "WATCHDOG=1", "STOPPING=1"]
    off = Notifier({})
    assert not off.enabled and off.watchdog_s is None and off.ready() is False
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_s is None


def test_doctor_explains_problems_in_plain_words(tmp_path):
    key = Ed25519PrivateKey.generate()
    pub = write_public_key(tmp_path / "pub.pem", key)
    bundle = write_bundle(tmp_path / "bundle", key=key)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.close()  # nothing listens there now
    prof = write_profile(tmp_path, pub, bundle, [{"name": "inbox", "kind": "dicom-folder", "path": str(tmp_path / "in"),
                                             "model": "seg"}],
                    sync={"enabled": True, "broker": f"mqtt://127.0.0.1:{port}"})
    lines: list[str] = []
    assert run_doctor(prof, echo=lines.append) == 0
    text = "\n".join(lines)
    assert "OK   model seg: toy-seg 0.0.1, hashes OK, signature OK" in text
    assert f"WARN broker: cannot reach 127.0.0.1:{port}" in text and "findings stay in the outbox" in text
    assert "WARN provider tensorrt: the profile asks for it but this onnxruntime build lacks it" in text or \
        "TensorrtExecutionProvider" in text
    # a tampered bundle is a FAIL with the file named, and the exit code says so
    with open(bundle / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")
    lines.clear()
    assert run_doctor(prof, echo=lines.append) == 1
    assert any(ln.startswith("FAIL model seg:") and "model.fp32.onnx: SHA-256 mismatch" in ln for ln in lines)
    assert lines[-1].startswith("doctor: 1 problem(s)")


def test_doctor_broker_reachable(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        (c,) = check_broker(f"mqtt://127.0.0.1:{srv.getsockname()[1]}", None)
        assert c.status == "OK"
    finally:
        srv.close()


def test_doctor_cli_without_profile():
    r = subprocess.run([sys.executable, "-m", "edge.cli", "doctor"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime" in r.stdout and "clock" in r.stdout and "doctor:" in r.stdout


# ------------------------------------------------------------------------------- medge run, end to end


def _folder_profile(tmp: Path, name: str, key_file: Path, signed, n: int) -> tuple[Path, Path, Path]:
    base = tmp / name
    base.mkdir()
    pub = write_public_key(base / "pub.pem", signed.key)
    incoming = base / "incoming"
    prof = write_profile(base, pub, signed.bundle, [{"name": "inbox", "kind": "dicom-folder", "path": str(incoming),
                                            "model": "seg", "settle_s": 0, "poll_interval_s": 0.05}],
                    metrics_file=str(base / "metrics.json"))
    data = yaml.safe_load(prof.read_text())
    data["privacy"] = {"pseudonym_key_file": str(key_file)}  # shared so both runs' pseudonyms compare
    prof.write_text(yaml.safe_dump(data))
    return prof, incoming, base / "data"


def test_sigterm_mid_stream_loses_no_accepted_study_and_restart_has_no_duplicates(tmp_path, signed_bundle):
    from edge.imaging.deid import Pseudonymizer

    n = 4
    key_file = tmp_path / "pseudonym.key"
    pseudo = Pseudonymizer.load_or_create(key_file)

    # reference: the same studies processed without interruption
    sops = write_studies(tmp_path / "studies", n)
    ref_prof, ref_in, ref_data = _folder_profile(tmp_path, "ref", key_file, signed_bundle, n)
    deliver(tmp_path / "studies", ref_in)
    proc = start_daemon(ref_prof)
    wait_daemon(lambda: not list(ref_in.glob("*.dcm")), 120, proc)
    stop_daemon(proc)
    ref = outbox_rows(ref_data / "outbox.sqlite3")
    by_instance: dict[str, set[str]] = {}
    for fid, d in ref.items():
        by_instance.setdefault(d["instance_id"], set()).add(fid)
    assert len(by_instance) == n, "every study should produce at least one finding with the toy segmenter"

    # interrupted run: SIGTERM as soon as the first study is done
    sock, npath = notify_socket(tmp_path)
    prof, incoming, data = _folder_profile(tmp_path, "run", key_file, signed_bundle, n)
    deliver(tmp_path / "studies", incoming)
    processed = data / "processed" / "inbox"
    proc = start_daemon(prof, npath)
    wait_daemon(lambda: processed.is_dir() and any(processed.iterdir()), 120, proc)
    out = stop_daemon(proc)
    msgs = drain_notifications(sock)
    assert msgs[0] == "READY=1" and "WATCHDOG=1" in msgs and "STOPPING=1" in msgs
    assert "SIGTERM received: stopping sources and draining" in out
    done = {p.name for p in processed.iterdir()}
    left = {p.name for p in incoming.glob("*.dcm")}
    assert done and left and done | left == set(sops) and not done & left, (done, left)
    rows = outbox_rows(data / "outbox.sqlite3")
    for name in done:  # every accepted (completed) study has all its findings durably in the outbox
        assert by_instance[pseudo.uid(sops[name])] <= set(rows), name
    assert all(d["study_id"].startswith("2.25.") and d["study_id"] not in sops.values() for d in rows.values())

    # restart: the studies left in incoming are processed; ids are deterministic, so nothing is duplicated
    proc = start_daemon(prof)
    wait_daemon(lambda: not list(incoming.glob("*.dcm")), 120, proc)
    stop_daemon(proc)
    rows = outbox_rows(data / "outbox.sqlite3")
    assert set(rows) == set(ref)
    metrics = __import__("json").loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["total"]["frames_done"] > 0 and metrics["device_id"] == "test-cart"


# ----------------------------------------------------------------------------------------- medge replay


def test_replay_prints_findings_and_latency_summary(tmp_path, signed_bundle):
    import json

    from pydicom.data import get_testdata_file

    from edge.commands.replay import replay_file

    key, bundle = signed_bundle.key, signed_bundle.bundle
    pub = write_public_key(tmp_path / "pub.pem", key)
    lines: list[str] = []
    code = replay_file(Path(get_testdata_file(CINE)), bundle, realtime=False, as_json=True, trusted_keys=[pub],
                       echo=lines.append)
    assert code == 0, lines
    objs = [json.loads(ln) for ln in lines]
    summary = objs[-1]["summary"]
    findings = [o["finding"] for o in objs[:-1]]
    assert summary["frames_done"] == 120 and summary["dropped"] == 0 and summary["errors"] == 0
    assert summary["latency_ms"]["p99"] > 0 and summary["fps"] > 0
    assert findings and len(findings) == summary["findings"]
    # one finding per event, not one per frame, each with the event's frame range
    assert len(findings) < 10 and all(f["frame_range"][0] <= f["frame_range"][1] for f in findings)
    text: list[str] = []
    assert replay_file(Path(get_testdata_file(CINE)), bundle, realtime=False, echo=text.append) == 0
    assert text[0].startswith("replaying color3d_jpeg_baseline.dcm") and "latency p50" in text[-2]
    # signed, but no key was given to check it with: that is "not verified", not "unsigned"
    assert "signature not verified (no trusted key given)" in text[0]
    assert text[-1].startswith("highest confidence: free_fluid 1.00 at frame")
    assert any("free_fluid" in t and "mm²" in t for t in text[1:-2])


def test_replay_bad_inputs_are_one_line_errors(tmp_path, signed_bundle):
    from edge.commands.replay import replay_file
    from edge.errors import BundleError, InputError

    bundle = signed_bundle.bundle
    with pytest.raises(InputError, match="missing.dcm: file not found"):
        replay_file(tmp_path / "missing.dcm", bundle)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    lines: list[str] = []
    assert replay_file(junk, bundle, realtime=False, echo=lines.append) == 1
    assert lines[-1].startswith("medge: error: ") and "junk.dcm" in lines[-1]
    other = write_public_key(tmp_path / "other.pem", Ed25519PrivateKey.generate())
    with pytest.raises(BundleError, match="signature does not verify"):
        replay_file(junk, bundle, trusted_keys=[other])


# ------------------------------------------------------------------------------------------- medge demo


def _demo_inputs_missing() -> str | None:
    from edge.commands.demo import demo_profile
    from edge.config import load_config
    from edge.errors import MedgeError

    try:
        load_config(demo_profile())
    except MedgeError as e:
        return f"demo bundles/samples not built in this checkout yet ({e})"
    return None


@pytest.mark.slow
def test_demo_runs_by_itself_and_explains_where_findings_went(tmp_path):
    missing = _demo_inputs_missing()
    if missing:
        pytest.skip(missing)
    from edge.commands.demo import run_demo

    lines: list[str] = []
    t0 = time.monotonic()
    assert run_demo(tmp_path / "demo", echo=lines.append) == 0
    assert time.monotonic() - t0 < 60
    text = "\n".join(lines)
    assert "finding [" in text and "in the local outbox" in text and "no broker is configured" in text
    assert (tmp_path / "demo" / "outbox.sqlite3").exists()
    assert f"medge findings list -c firmware_configs/demo.yaml --data-dir {tmp_path / 'demo'}" in text


def test_demo_keeps_its_findings_where_the_readme_says_and_they_can_be_listed(tmp_path):
    """The README's newcomer path: medge demo, then medge findings list / outbox status on the demo profile."""
    missing = _demo_inputs_missing()
    if missing:
        pytest.skip(missing)
    env = {**os.environ, "HOME": str(tmp_path)}  # the demo profile's data_dir is ~/.local/share/medge/demo
    run = lambda *a: subprocess.run([sys.executable, "-m", "edge.cli", *a], cwd=ROOT, env=env, capture_output=True,  # noqa: E731
                                    text=True, timeout=120)
    r = run("demo")
    assert r.returncode == 0, r.stderr
    assert "medge findings list -c firmware_configs/demo.yaml\n" in r.stdout
    folder = tmp_path / ".local/share/medge/demo"
    assert (folder / "outbox.sqlite3").is_file() and (folder / ".medge-demo").is_file()
    r = run("findings", "list", "-c", "firmware_configs/demo.yaml", "--json")
    rows = json.loads(r.stdout)
    assert r.returncode == 0 and {x["label"] for x in rows} == {"free_fluid", "focal_opacity"}
    assert {x["state"] for x in rows} == {"pending"} and {x["modality"] for x in rows} == {"US", "CR"}
    assert all(x["model"].endswith("int8") and x["confidence"] is not None for x in rows)
    r = run("findings", "show", rows[0]["finding_id"], "-c", "firmware_configs/demo.yaml")
    assert r.returncode == 0 and '"finding_id": "' + rows[0]["finding_id"] in r.stdout
    r = run("outbox", "status", "-c", "firmware_configs/demo.yaml")
    assert r.returncode == 0 and "pending    urgent 1  routine 1" in r.stdout
    r = run("demo")  # a second run starts its folder afresh: the same two findings, not four
    r = run("findings", "list", "-c", "firmware_configs/demo.yaml", "--json")
    assert len(json.loads(r.stdout)) == 2


@pytest.mark.slow
def test_readme_local_broker_path_demo_to_receiver_to_hospital_list(tmp_path):
    """The README's hospital-side try-out, as written: a local mosquitto, 'medge receive' on it, 'medge demo
    --broker', then 'medge hospital findings list': the demo's findings arrive, each acknowledged once."""
    from tests.support.mqtt_broker import free_port, mosquitto_path, wait_port

    missing = _demo_inputs_missing()
    if missing:
        pytest.skip(missing)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"  # what 'mosquitto -p PORT' does, bound to 127.0.0.1 only
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    url, db = f"mqtt://127.0.0.1:{port}", tmp_path / "hospital.sqlite3"
    env = {**os.environ, "HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "edge.cli"]
    mq = subprocess.Popen([mosquitto_path(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rx = None
    try:
        wait_port("127.0.0.1", port)
        rx = subprocess.Popen([*cmd, "receive", "--broker", url, "--db", str(db)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 20
        while not db.exists() and time.monotonic() < deadline:  # the receiver opens its store, then subscribes
            time.sleep(0.1)
        time.sleep(1.0)
        r = subprocess.run([*cmd, "demo", "--broker", url], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"sent to {url}: 2 of 2 acknowledged by the hospital" in r.stdout, r.stdout
        assert "is plain MQTT" in r.stderr  # allowed for a try-out, but said out loud
        r = subprocess.run([*cmd, "hospital", "findings", "list", "--db", str(db), "--json"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
        rows = json.loads(r.stdout)
        assert r.returncode == 0 and sorted(x["finding"]["label"] for x in rows) == ["focal_opacity", "free_fluid"]
        assert {x["device_id"] for x in rows} == {"demo-01"}
    finally:
        if rx is not None:
            rx.terminate()
            out = rx.communicate(timeout=30)[0]
            assert rx.returncode == 0, out
        mq.terminate()
        mq.wait(10)
    # a normal stop is one readable INFO line with the counts, no traceback, no error
    stop_line = next(ln for ln in out.splitlines() if "receiver stopped:" in ln)
    assert " INFO " in stop_line and "received 2, stored 2, duplicates 0, rejected 0" in stop_line, out
    assert "Traceback" not in out and " ERROR " not in out and "is plain MQTT" in out


def test_run_refuses_a_tampered_bundle_before_starting(tmp_path):
    key = Ed25519PrivateKey.generate()
    pub = write_public_key(tmp_path / "pub.pem", key)
    bundle = write_bundle(tmp_path / "bundle", key=key)
    prof = write_profile(tmp_path, pub, bundle, [{"name": "inbox", "kind": "dicom-folder", "path": str(tmp_path / "in"),
                                             "model": "seg"}])
    with open(bundle / "model.fp32.onnx", "ab") as f:
        f.write(b"\0")
    r = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(prof)], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("medge: error: model 'seg': ") and "model.fp32.onnx: SHA-256 mismatch" in err
    assert not (tmp_path / "data" / "outbox.sqlite3").exists()  # nothing was started


def test_replay_real_bundles_on_demo_samples_match_truth():
    """The signed INT8 reference bundles on the committed samples: one free-fluid event at the right time with
    the right area, an opacity on the opacity radiograph and nothing on the normal one."""
    import json

    from edge.commands.replay import replay_file

    samples, bundles = ROOT / "models/samples", ROOT / "models/bundles"
    if not (bundles / "us-free-fluid/manifest.yaml").exists() or not (samples / "truth.json").exists():
        pytest.skip("reference bundles/samples not built in this checkout")
    truth = json.loads((samples / "truth.json").read_text())
    keys = [ROOT / "models/keys/demo-signing.pub.pem"]

    def run(sample: str, bundle: str) -> list[dict]:
        lines: list[str] = []
        assert replay_file(samples / sample, bundles / bundle, realtime=False, as_json=True, trusted_keys=keys,
                           echo=lines.append) == 0
        return [json.loads(ln)["finding"] for ln in lines[:-1]]

    us = truth["us_cine.dcm"]
    (ev,) = run("us_cine.dcm", "us-free-fluid")
    first = us["fluid_frames"][0]
    assert ev["label"] == "free_fluid" and ev["priority"] == "urgent" and ev["model"]["variant"] == "int8"
    assert first <= ev["frame_range"][0] <= first + 3
    want = us["fluid_area_mm2"][ev["frame_index"]]
    assert ev["measurements"]["area_mm2"] == pytest.approx(want, rel=0.2)
    last = us["fluid_frames"][-1]
    assert last - 3 <= ev["frame_range"][1] <= last  # the finding covers the whole episode, not its onset
    assert [f["label"] for f in run("cxr_opacity.dcm", "cxr-opacity")] == ["focal_opacity"]
    # nothing on the normal radiograph, and the summary says how close it came
    lines: list[str] = []
    assert replay_file(samples / "cxr_normal.dcm", bundles / "cxr-opacity", realtime=False, echo=lines.append) == 0
    assert "findings 0" in lines[-2] and lines[-1].startswith("highest confidence: focal_opacity 0.")
    assert run("cxr_normal.dcm", "cxr-opacity") == []


def test_newcomer_sends_findings_to_a_local_broker_and_lists_them_at_the_receiver(tmp_path, signed_bundle, broker):
    """medge run with a finite source logs one line per finding, waits for the hospital's acknowledgements
    before it exits, and the receiver's findings are listed without SQL."""
    from pydicom.data import get_testdata_file

    from tests.support.sync_helpers import ReceiverThread

    b = broker
    prof = write_profile(tmp_path, signed_bundle.public_key, signed_bundle.bundle,
                         [{"name": "cine", "kind": "replay", "path": str(get_testdata_file(CINE)), "model": "seg",
                           "realtime": False}],
                         sync={"enabled": True, "broker": b.url, "ca_file": str(b.ca), "cert_file": str(b.cert("d1")),
                               "key_file": str(b.key("d1")), "backoff_min_s": 0.1, "backoff_max_s": 1.0,
                               "drain_on_exit_s": 30})
    data = yaml.safe_load(prof.read_text())
    data["device"] = {"id": "d1", "site": "s1"}
    prof.write_text(yaml.safe_dump(data))
    db = tmp_path / "hospital.sqlite3"
    with ReceiverThread(b, db):
        r = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(prof)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    finding_lines = [ln for ln in out.splitlines() if ".pipeline: finding [" in ln]
    assert finding_lines and all(" INFO " in ln and " US " in ln and "toy-seg 0.0.1 fp32" in ln for ln in finding_lines)
    assert "waiting up to 30 s for the hospital to acknowledge" in out
    assert "the hospital has acknowledged every finding in the outbox" in out
    stop_line = next(ln for ln in out.splitlines() if ".daemon: stopped:" in ln or " stopped: " in ln)
    assert " INFO " in stop_line and "Traceback" not in out
    lst = subprocess.run([sys.executable, "-m", "edge.cli", "hospital", "findings", "list", "--db", str(db), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    rows = json.loads(lst.stdout)
    assert lst.returncode == 0 and len(rows) == len(finding_lines)
    assert {x["device_id"] for x in rows} == {"d1"} and rows[0]["finding"]["label"] == "free_fluid"
    show = subprocess.run([sys.executable, "-m", "edge.cli", "hospital", "findings", "show", rows[0]["finding_id"],
                           "--db", str(db)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert show.returncode == 0 and "s1/d1" in show.stdout and '"confidence"' in show.stdout
    device = subprocess.run([sys.executable, "-m", "edge.cli", "findings", "list", "-c", str(prof)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert device.returncode == 0 and device.stdout.count("acknowledged") == len(finding_lines)


def test_without_the_hospital_a_finished_run_says_what_stays_pending(tmp_path, signed_bundle, broker):
    from pydicom.data import get_testdata_file

    b = broker
    prof = write_profile(tmp_path, signed_bundle.public_key, signed_bundle.bundle,
                         [{"name": "cine", "kind": "replay", "path": str(get_testdata_file(CINE)), "model": "seg",
                           "realtime": False}],
                         sync={"enabled": True, "broker": b.url, "ca_file": str(b.ca), "cert_file": str(b.cert("d1")),
                               "key_file": str(b.key("d1")), "drain_on_exit_s": 2})
    data = yaml.safe_load(prof.read_text())
    data["device"] = {"id": "d1", "site": "s1"}
    prof.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(prof)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "not acknowledged by the hospital yet" in out and "they stay in the outbox" in out
