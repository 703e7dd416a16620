"""Poison inputs: malformed headers from real objects, a decompression bomb, objects that kill the process.

Each named object here is one the fault harness crashed or bloated the daemon with. They are refused with
one line, by file drop and by C-STORE, with the daemon still running and exiting 0 on SIGTERM; an object
that dies with the process twice is quarantined at the next start; a pipeline stage that dies makes
the daemon exit non-zero.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edge.errors import InputError
from edge.imaging.dicom import frames_from_file
from edge.imaging.limits import DecodeLimits
from edge.sources.quarantine import REASON_SUFFIX
from tests.support import ROOT
from tests.support import dicom_mutations as dm
from tests.support.daemon import (
    drop_file,
    inbox_source,
    send_raw,
    start_daemon,
    start_listening,
    stop_daemon,
    store_source,
    wait_daemon,
    write_profile,
    write_studies,
)
from tests.support.dicom_files import find
from tests.support.dicom_mutations import POISONS, make_poisons

# name -> (make(folder) -> path, what the one-line refusal says)


@pytest.mark.parametrize("name", sorted(POISONS))
def test_each_named_poison_is_one_line_refusal(tmp_path, name):
    path = make_poisons(tmp_path)[name]
    with pytest.raises(InputError) as e:
        list(frames_from_file(path, "t"))
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and POISONS[name][1] in msg and "\n" not in msg
    r = subprocess.run([sys.executable, "-m", "edge.cli", "inspect", str(path)], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 1 and "REFUSED" in r.stdout and POISONS[name][1] in r.stdout, r.stdout + r.stderr


def test_decompression_bomb_is_refused_before_decoding_with_bounded_memory(tmp_path):
    """The fault harness: 310 KB RLE declaring 60000 x 60000, 7 GB RSS for 17 s. Measured in a fresh process."""
    bomb = dm.huge_rle(tmp_path / "bomb.dcm")
    assert bomb.stat().st_size < 400_000
    code = ("import sys, time\n"
            "from edge.imaging.dicom import frames_from_file\n"
            "from edge.errors import InputError\n"
            "from tests.support.fuzz_headers import _rss_bytes, peak_rss_bytes\n"
            "before = _rss_bytes(); t = time.perf_counter()\n"
            "try:\n"
            "    list(frames_from_file(sys.argv[1], 't'))\n"
            "except InputError as e:\n"
            "    print('refused', e)\n"
            "print('growth_mb', (peak_rss_bytes() - before) / 2**20, 'seconds', time.perf_counter() - t)\n")
    r = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "refused" in r.stdout and "60000x60000" in r.stdout
    growth = float(r.stdout.split("growth_mb")[1].split()[0])
    seconds = float(r.stdout.split("seconds")[1].split()[0])
    assert growth < 100 and seconds < 2.0, r.stdout


def test_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path):
    import zlib

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(find("US1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    small = tmp_path / "deflated.dcm"
    ds.save_as(small, enforce_file_format=True)
    assert len(list(frames_from_file(small, "t"))) == 1  # a normal deflated object decodes
    # a bomb: a valid Part 10 header followed by a stream that inflates to 64 MB of zeros, against a
    # device limit of 16 MB an object (+ 16 MB for non-pixel elements)
    from edge.imaging.dicom_guard import _file_meta_end

    offset, ts = _file_meta_end(small)
    assert ts == DeflatedExplicitVRLittleEndian
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = comp.compress(bytes(64 << 20)) + comp.flush()
    bomb = tmp_path / "deflate-bomb.dcm"
    bomb.write_bytes(small.read_bytes()[:offset] + body)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(InputError, match=r"deflated data set inflates to more than 32 MiB, over the device's limit"):
        list(frames_from_file(bomb, "t", DecodeLimits.from_mb(8, 16)))


def test_codestream_that_declares_another_size_is_refused(tmp_path):
    import pydicom

    ds = pydicom.dcmread(find("RG3_J2KI.dcm"))
    ds.Rows, ds.Columns = 880, 880  # the JPEG 2000 codestream still says 1760 x 1760
    p = tmp_path / "mismatch.dcm"
    ds.save_as(p)
    with pytest.raises(InputError, match="frame 0: the JPEG 2000 codestream declares 1760x1760, the header 880x880"):
        list(frames_from_file(p, "t"))
    ds = pydicom.dcmread(find("color3d_jpeg_baseline.dcm"))
    ds.Columns = 2 * int(ds.Columns)
    p = tmp_path / "mismatch-jpeg.dcm"
    ds.save_as(p)
    with pytest.raises(InputError, match="frame 0: the JPEG codestream declares 640x480, the header 1280x480"):
        list(frames_from_file(p, "t"))


# --------------------------------------------------------------------------------- the daemon, end to end


def test_poison_by_drop_and_c_store_is_quarantined_and_the_daemon_keeps_running(tmp_path, signed_bundle):
    from tests.support.mqtt_broker import free_port

    pub, bundle = signed_bundle.public_key, signed_bundle.bundle
    drop, port = tmp_path / "drop", free_port()
    prof = write_profile(tmp_path, pub, bundle, [inbox_source(drop), store_source(port)],
                    metrics_file=str(tmp_path / "metrics.json"))
    poisons = make_poisons(tmp_path / "poison")
    data = tmp_path / "data"
    proc = start_listening(prof, data)
    try:
        for p in poisons.values():
            drop_file(p, drop)
        for p in poisons.values():
            assert send_raw(p, port) == 0x0000  # durably received; refusing it is medge's business now
        qdir = data / "quarantine"
        wait_daemon(lambda: len(list(qdir.glob("*" + REASON_SUFFIX))) == 2 * len(poisons), 60, proc)
        # the daemon is alive and still does its work: a good study after the poison is processed
        write_studies(drop, 1)
        wait_daemon(lambda: not list(drop.glob("*.dcm")), 60, proc)
        assert proc.poll() is None
    finally:
        out = stop_daemon(proc)  # exit status 0 (asserted inside): nothing crashed
    reasons = [s.read_text().splitlines()[0] for s in qdir.glob("*" + REASON_SUFFIX)]
    for name, (_, why) in POISONS.items():
        assert sum(why in r for r in reasons) == 2, (name, reasons)  # once by drop, once by C-STORE
    assert all("\n" not in r for r in reasons)
    assert "pipeline stage" not in out and "Traceback" not in out
    assert len(list((data / "processed" / "inbox").iterdir())) == 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())  # counted, per source
    assert metrics["total"]["quarantined"] == 2 * len(poisons)
    assert {s: metrics["sources"][s]["inputs"]["quarantined"] for s in ("inbox", "xray")} == {"inbox": 5, "xray": 5}


def test_an_object_that_kills_the_daemon_twice_is_quarantined_at_the_next_start(tmp_path, signed_bundle):
    """SIGKILL while an object is being processed, as a native decoder crash or the OOM killer would."""
    pub, bundle = signed_bundle.public_key, signed_bundle.bundle
    drop = tmp_path / "drop"
    prof = write_profile(tmp_path, pub, bundle, [inbox_source(drop)])
    write_studies(drop, 1)
    (victim,) = drop.glob("*.dcm")
    marks = tmp_path / "data" / "attempts" / "inbox"

    def started(n: int) -> bool:
        try:
            return json.loads(next(marks.iterdir()).read_text())["attempts"] == n
        except (OSError, StopIteration, ValueError):
            return False

    for run in (1, 2):
        proc = start_daemon(prof)
        wait_daemon(lambda run=run: started(run), 60, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        mark = json.loads(next(marks.iterdir()).read_text())
        assert mark == {"path": str(victim), "attempts": run} and victim.exists()
    proc = start_daemon(prof)
    qdir = tmp_path / "data" / "quarantine"
    wait_daemon(lambda: any(qdir.glob("*" + REASON_SUFFIX)), 60, proc)
    out = stop_daemon(proc)
    (reason,) = [s.read_text().splitlines()[0] for s in qdir.glob("*" + REASON_SUFFIX)]
    assert "the daemon stopped 2 times while processing this object" in reason and str(victim) in reason
    assert not victim.exists() and not any(marks.iterdir())
    assert "quarantined as poison" in out


def test_a_pipeline_stage_that_dies_makes_the_daemon_exit_non_zero_without_losing_the_object(tmp_path, signed_bundle):
    """systemd restarts medge only on a non-zero exit (Restart=on-failure)."""
    from edge.config import load_config
    from edge.runtime.daemon import run_daemon

    pub, bundle = signed_bundle.public_key, signed_bundle.bundle
    drop = tmp_path / "drop"
    prof = write_profile(tmp_path, pub, bundle, [inbox_source(drop)])
    write_studies(drop, 2)

    def die(finding, new):  # a defect in the post stage (here: the finding callback), not an input problem
        raise SystemExit("stage defect")

    t0 = time.monotonic()
    code = run_daemon(load_config(prof), max_seconds=60, on_finding=die)
    assert code == 1 and time.monotonic() - t0 < 30  # neither 0 nor a hang in the drain
    left = {p.name for p in drop.glob("*.dcm")}
    assert left, "the object whose findings were being published must stay in incoming for the restart"


def test_header_fuzzer_every_mutant_is_decoded_or_quarantined_with_bounded_memory():
    """Seeded mutations (wrong VRs, odd lengths, bad enumerated values, absurd dimensions, truncations, byte
    flips) of real CR and ultrasound objects from several vendors, through the durable inbox; its own
    process, so peak RSS is this run's."""
    r = subprocess.run([sys.executable, "-m", "tests.support.fuzz_headers", "--count", "3000", "--seed", "20261201"],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["escaped"] == [], json.dumps(summary["escaped"][:3], indent=1)
    assert r.returncode == 0
    assert summary["decoded"] + summary["quarantined"] == 3000
    assert summary["decoded"] > 100 and summary["quarantined"] > 1000  # both ends of the path are exercised
    assert summary["peak_growth_mb"] < 300, summary
    assert "Citizen" not in r.stderr  # pydicom's warnings quote raw values (a patient name in a seed)
