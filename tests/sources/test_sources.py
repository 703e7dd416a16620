"""Sources on real files: a watched DICOM folder, live video (with unplug/reopen), and cine replay."""

from __future__ import annotations

import shutil
import threading
import time

import pytest

from edge.config import SourceConfig
from edge.sources import build_source
from edge.sources.quarantine import REASON_SUFFIX
from tests.support.dicom_files import find
from tests.support.sources import Runner, ctx, folder_cfg, write_video

# ------------------------------------------------------------------------------------ dicom-folder


def test_folder_processes_good_quarantines_bad_and_keeps_running(tmp_path):
    watch = tmp_path / "watch"
    watch.mkdir()
    src = build_source(folder_cfg(watch), ctx(tmp_path))
    r = Runner(src)
    shutil.copy(find("RG3_UNCR.dcm"), watch / "cr.dcm")
    (watch / "junk.dcm").write_bytes(b"not dicom at all")
    cine = find("examples_ybr_color.dcm").read_bytes()
    (watch / "cut.dcm").write_bytes(cine[: len(cine) // 2])
    (watch / "writing.dcm.part").write_bytes(cine)  # still being copied: must be ignored
    assert r.wait_for(lambda: src.stats.quarantined == 2 and len(r.frames) == 1)
    shutil.copy(find("examples_ybr_color.dcm"), watch / "cine.dcm")  # after the bad ones: still running
    assert r.wait_for(lambda: len(r.frames) == 31 and not (watch / "cine.dcm").exists())
    r.finish()
    processed = tmp_path / "data" / "processed" / "drop"
    assert sorted(p.name for p in processed.iterdir()) == ["cine.dcm", "cr.dcm"]
    assert (watch / "writing.dcm.part").exists()
    reasons = sorted(p.read_text().splitlines()[0] for p in (tmp_path / "data" / "quarantine").glob("*" + REASON_SUFFIX))
    assert len(reasons) == 2
    assert any("truncated" in x and "cut.dcm" in x for x in reasons)
    assert any("not a DICOM file" in x and "junk.dcm" in x for x in reasons)
    assert src.stats.accepted == 31 and src.stats.quarantined == 2 and src.stats.errors == 2
    assert all(not f.live and f.source == "drop" for f in r.frames)


def test_folder_settles_before_reading(tmp_path):
    watch = tmp_path / "watch"
    watch.mkdir()
    src = build_source(folder_cfg(watch), ctx(tmp_path))
    f = watch / "a.dcm"
    f.write_bytes(b"partial")
    assert src.ready_files() == []  # first sighting
    with open(f, "ab") as fh:
        fh.write(b"more")  # still growing
    assert src.ready_files() == []
    assert src.ready_files() == [f]  # unchanged across two polls


def test_uncompleted_file_stays_in_incoming_and_is_reprocessed_after_restart(tmp_path):
    watch = tmp_path / "watch"
    watch.mkdir()
    shutil.copy(find("examples_ybr_color.dcm"), watch / "cine.dcm")
    src = build_source(folder_cfg(watch), ctx(tmp_path))
    r = Runner(src, complete=False)  # "crash": findings never reached the outbox
    assert r.wait_for(lambda: len(r.frames) == 30)
    r.finish()
    assert (watch / "cine.dcm").exists()
    src2 = build_source(folder_cfg(watch), ctx(tmp_path))
    r2 = Runner(src2)
    assert r2.wait_for(lambda: not (watch / "cine.dcm").exists())
    r2.finish()
    assert len(r2.frames) == 30 and r2.frames[0].study.sop_instance_uid == r.frames[0].study.sop_instance_uid


def test_failed_processing_is_retried_then_quarantined(tmp_path):
    watch = tmp_path / "watch"
    watch.mkdir()
    shutil.copy(find("RG3_UNCR.dcm"), watch / "cr.dcm")
    src = build_source(folder_cfg(watch), ctx(tmp_path))
    src.inbox.retry_base_s = 0.01
    r = Runner(src, ok=False)
    assert r.wait_for(lambda: src.stats.quarantined == 1)
    r.finish()
    assert len(r.frames) == 3  # three attempts
    (side,) = (tmp_path / "data" / "quarantine").glob("*" + REASON_SUFFIX)
    assert "processing failed 3 times" in side.read_text()


# ------------------------------------------------------------------------------------------- video


def test_video_file_frames_are_rgb_live_with_rate(tmp_path):
    vid = write_video(tmp_path / "v.avi")
    src = build_source(SourceConfig(name="cam", kind="video", model="m", path=vid), ctx(tmp_path))
    frames = list(src.frames(threading.Event()))
    assert len(frames) == 12
    f = frames[5]
    assert f.live and f.pixels.shape == (48, 64, 3) and f.frame_rate == pytest.approx(25.0)
    assert f.pixels[20, 40, 0] > 200 and f.pixels[20, 40, 2] < 50  # red in RGB order
    assert [x.index for x in frames] == list(range(12))
    assert {x.modality for x in frames} == {"US"}  # the profile default: frame grabbers on these carts carry ultrasound
    endo = build_source(SourceConfig(name="scope", kind="video", model="m", path=vid, modality="ES"), ctx(tmp_path))
    assert {x.modality for x in endo.frames(threading.Event())} == {"ES"}


def test_video_reopens_with_backoff_after_unplug(tmp_path):
    url = tmp_path / "grabber.avi"  # not there yet: the "device" is unplugged
    cfg = SourceConfig(name="cam", kind="video", model="m", url=str(url), reopen_backoff_max_s=0.5)
    src = build_source(cfg, ctx(tmp_path))
    r = Runner(src)
    assert r.wait_for(lambda: src.stats.errors >= 1)
    assert not r.frames
    write_video(tmp_path / "tmp.avi")
    (tmp_path / "tmp.avi").rename(url)  # plugged in
    assert r.wait_for(lambda: len(r.frames) >= 12)
    # the stream "ends" (unplug): the source re-opens instead of finishing
    assert r.wait_for(lambda: src.stats.reopens >= 1 and len(r.frames) >= 24)
    assert r.t.is_alive()
    r.finish()
    assert all(f.live for f in r.frames)


def test_max_fps_drops_at_the_source(tmp_path):
    vid = write_video(tmp_path / "v.avi", n=12)
    cfg = SourceConfig(name="cam", kind="video", model="m", path=vid, max_fps=0.5)
    src = build_source(cfg, ctx(tmp_path))
    frames = list(src.frames(threading.Event()))
    assert len(frames) == 1 and src.stats.dropped == 11


# ------------------------------------------------------------------------------------------ replay


@pytest.mark.parametrize("name,n", [("examples_ybr_color.dcm", 12), ("color3d_jpeg_baseline.dcm", 15)])
def test_replay_honours_recorded_frame_rate(tmp_path, name, n):
    cfg = SourceConfig(name="rp", kind="replay", model="m", path=find(name), realtime=True)
    src = build_source(cfg, ctx(tmp_path))
    stop = threading.Event()
    times, frames = [], []
    for f in src.frames(stop):
        times.append(time.monotonic())
        frames.append(f)
        if len(frames) == n:
            stop.set()
    assert len(frames) == n and frames[0].frame_rate == pytest.approx(30.0, rel=1e-3)
    elapsed = times[-1] - times[0]
    expected = (n - 1) / 30.0
    assert abs(elapsed - expected) < 0.1 + 0.15 * expected, (elapsed, expected)
    assert not any(f.live for f in frames)


def test_replay_fast_and_video_and_bad_file(tmp_path):
    cfg = SourceConfig(name="rp", kind="replay", model="m", path=find("examples_ybr_color.dcm"), realtime=False)
    t = time.monotonic()
    frames = list(build_source(cfg, ctx(tmp_path)).frames(threading.Event()))
    assert len(frames) == 30 and time.monotonic() - t < 29 / 30.0  # faster than real time
    vid = write_video(tmp_path / "v.avi", n=5, fps=50)
    vframes = list(build_source(SourceConfig(name="rv", kind="replay", model="m", path=vid), ctx(tmp_path)).frames(threading.Event()))
    assert len(vframes) == 5 and not vframes[0].live and vframes[0].frame_rate == pytest.approx(50.0)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(find("examples_ybr_color.dcm").read_bytes()[:5000])
    src = build_source(SourceConfig(name="rb", kind="replay", model="m", path=bad), ctx(tmp_path))
    assert list(src.frames(threading.Event())) == [] and "truncated" in src.stats.last_error


def test_inspect_video_file(tmp_path):
    import json

    from edge.commands.inspect import inspect_file

    vid = write_video(tmp_path / "v.avi", n=6, fps=20)
    lines: list[str] = []
    assert inspect_file(vid, as_json=True, echo=lines.append) == 0
    info = json.loads(lines[0])
    assert info["kind"] == "video" and (info["rows"], info["columns"]) == (48, 64)
    assert info["frame_rate"] == pytest.approx(20.0) and info["frames"] == 6


def test_inspect_says_what_a_file_is_when_the_daemon_cannot_read_it(tmp_path):
    """A PNG is a still image (not a one-frame video with -2**63 frames), a folder and an empty file say so."""
    import cv2
    import numpy as np

    from edge.commands.inspect import inspect_file
    from edge.errors import InputError

    png = tmp_path / "shot.png"
    cv2.imwrite(str(png), np.zeros((10, 12), np.uint8))
    lines: list[str] = []
    assert inspect_file(png, echo=lines.append) == 1
    assert lines[0].startswith("shot.png: REFUSED") and "a still PNG image, not DICOM or video" in lines[0]
    assert "  kind              image" in lines and not any("frames" in ln for ln in lines)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    lines = []
    assert inspect_file(empty, echo=lines.append) == 1 and "empty file (0 bytes" in lines[0]
    with pytest.raises(InputError, match="is a folder; give one file in it"):
        inspect_file(tmp_path)


def test_unreachable_rtsp_stream_backs_off_and_stops_promptly(tmp_path):
    import socket

    with socket.socket() as s:  # a local port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = SourceConfig(name="cam", kind="video", model="m", url=f"rtsp://127.0.0.1:{port}/live", reopen_backoff_max_s=0.2)
    src = build_source(cfg, ctx(tmp_path))
    r = Runner(src)
    assert r.wait_for(lambda: src.stats.errors >= 3)  # backoff capped at 0.2 s
    assert r.t.is_alive() and not r.frames
    t = time.monotonic()
    r.finish()
    assert time.monotonic() - t < 2.0
