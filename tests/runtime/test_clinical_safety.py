"""A model reads only what it was made for, and the device notices when its inputs drift.

Real bundles (the signed demo bundles), real DICOM objects (pydicom's MR and CT, pydicom-data's SonoSite
cine, the demo samples), the real pipeline and ONNX Runtime sessions.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.data import get_testdata_file

from edge.commands.inspect import inspect_file
from edge.commands.monitor import run_monitor
from edge.commands.replay import MemorySink, replay_file
from edge.config import load_config
from edge.errors import BundleError, ConfigError
from edge.events import DeviceEvent
from edge.frames import Frame
from edge.inference.bundle import load_bundle
from edge.inference.drift import MonitorSettings
from edge.inference.loaded_model import load_model_dir
from edge.inference.modelset import verify_models
from edge.link.outbox import Outbox
from edge.runtime.daemon import run_daemon
from edge.runtime.metrics import Metrics
from edge.runtime.pipeline import PipelineSettings, build_pipeline
from tests.support import ROOT
from tests.support.bundles import write_bundle
from tests.support.daemon import CINE

BUNDLES, SAMPLES = ROOT / "models/bundles", ROOT / "models/samples"
KEYS = [ROOT / "models/keys/demo-signing.pub.pem"]
MR, CT = get_testdata_file("MR_small.dcm"), get_testdata_file("CT_small.dcm")


def _replay(path, bundle: str) -> tuple[int, list[str]]:
    lines: list[str] = []
    rc = replay_file(Path(path), BUNDLES / bundle, realtime=False, trusted_keys=KEYS, echo=lines.append)
    return rc, lines


@pytest.mark.parametrize("path", [SAMPLES / "us_cine.dcm", get_testdata_file(CINE), MR], ids=["us-demo", "us-sonosite",
                                                                                             "mr"])
def test_replay_through_the_xray_bundle_makes_no_finding_and_says_why_in_one_line(path):
    rc, lines = _replay(path, "cxr-opacity")
    assert rc == 1  # nothing was read: scripts see it too
    assert not any("focal_opacity" in ln for ln in lines)
    (reason,) = [ln for ln in lines if ln.startswith("not read:")]
    modality = pydicom.dcmread(path, stop_before_pixels=True).Modality
    assert f"modality {modality}; the model is for CR, DX" in reason and "cxr-opacity 1.0.0" in reason
    assert "findings 0" in next(ln for ln in lines if "frame(s) in" in ln)


def test_the_xray_bundle_still_reads_its_own_radiographs():
    rc, lines = _replay(SAMPLES / "cxr_opacity.dcm", "cxr-opacity")
    assert rc == 0 and any("focal_opacity" in ln for ln in lines) and not any("not read" in ln for ln in lines)


def _profile(tmp_path: Path, sources: list[dict], **extra) -> Path:
    prof = {"schema_version": 1, "device": {"id": "cart-1", "site": "lab"}, "data_dir": str(tmp_path / "data"),
            "trusted_keys": [str(k) for k in KEYS], "log_level": "info",
            "models": [{"name": "cxr", "bundle": str(BUNDLES / "cxr-opacity"), "warmup_runs": 0},
                       {"name": "us", "bundle": str(BUNDLES / "us-free-fluid"), "warmup_runs": 0}],
            "sources": sources, "pipeline": {"metrics_interval_s": 0.2, "metrics_file": str(tmp_path / "metrics.json")},
            **extra}
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(prof))
    return p


def test_daemon_records_a_refused_object_once_counts_it_per_reason_and_logs_once(tmp_path, caplog):
    """Three stored objects on the X-ray model: the radiograph gives a finding, the MR and the CT give no
    finding but one out-of-scope event each for the hospital, a count per reason and one log line."""
    sources = [{"name": "inbox", "kind": "replay", "path": str(p), "model": "cxr", "realtime": False}
               for p in (MR, CT)]
    sources[1]["name"] = "inbox2"
    sources.append({"name": "inbox3", "kind": "replay", "path": str(SAMPLES / "cxr_opacity.dcm"), "model": "cxr",
                    "realtime": False})
    cfg = load_config(_profile(tmp_path, sources, sync={"enabled": False, "drain_on_exit_s": 0}))
    with caplog.at_level(logging.INFO):
        assert run_daemon(cfg, max_seconds=60) == 0
    with Outbox(cfg.outbox_path, create=False) as ob:
        findings = ob.list_findings(100)
        events = ob.list_events(100)
    assert [f.label for f in findings] == ["focal_opacity"]
    assert sorted(e.reason for e in events) == ["modality", "modality"]
    assert {e.kind for e in events} == {"out_of_scope"}
    assert any("modality MR" in e.detail for e in events) and any("modality CT" in e.detail for e in events)
    warned = [r.getMessage() for r in caplog.records if "outside the intended use" in r.getMessage()]
    assert len(warned) == 2  # once per source and reason
    snap = json.loads((tmp_path / "metrics.json").read_text())
    assert snap["sources"]["inbox"]["out_of_scope"] == {"modality": 1} and snap["total"]["out_of_scope"] == 2
    # the drift monitor's state is in the metrics (and so the heartbeat): the read radiograph only
    assert snap["sources"]["inbox3"]["drift"]["frames"] == 1 and snap["sources"]["inbox"]["drift"]["frames"] == 0
    assert snap["total"]["drifting"] == []


def test_a_re_read_object_adds_no_second_event(tmp_path):
    """Deterministic event ids: re-processing a refused object after a restart is a duplicate, like a finding."""
    lm = load_model_dir(BUNDLES / "cxr-opacity", None, KEYS, logging.getLogger("t"))
    sink = MemorySink()
    from edge.config import SourceConfig
    from edge.sources import SourceContext
    from edge.sources.replay import ReplaySource

    for _ in range(2):
        src = ReplaySource(SourceConfig(name="s", kind="replay", model="cxr", path=Path(MR), realtime=False),
                           SourceContext(tmp_path))
        pl = build_pipeline(src, lm, "cart-1", lambda s: ("st", "se", "in"), sink, Metrics()).start()
        assert pl.join(30)
    (ev,) = sink.events.values()
    assert ev.kind == "out_of_scope" and ev.instance_id == "in" and ev.model.name == "cxr-opacity"
    lm.close()


def test_config_check_refuses_sources_whose_modality_the_model_excludes(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0")
    p = _profile(tmp_path, [{"name": "probe", "kind": "video", "path": str(video), "model": "cxr"},
                            {"name": "mri-drop", "kind": "dicom-folder", "path": str(tmp_path), "model": "cxr",
                             "default_modality": "MR"},
                            {"name": "cart", "kind": "video", "path": str(video), "model": "us"}])
    with pytest.raises(ConfigError) as e:
        verify_models(load_config(p))
    lines = str(e.value).splitlines()
    assert len(lines) == 2  # both at once, the correctly wired source not among them
    assert "sources[0] (probe): modality US is outside the intended use of model 'cxr'" in lines[0]
    assert "sources[1] (mri-drop): modality MR" in lines[1]


def test_an_object_without_modality_takes_the_sources_declared_one_or_is_not_read(tmp_path):
    ds = pydicom.dcmread(SAMPLES / "cxr_opacity.dcm")
    del ds.Modality
    f = tmp_path / "no_modality.dcm"
    ds.save_as(f)
    lm = load_model_dir(BUNDLES / "cxr-opacity", None, KEYS, logging.getLogger("t"))
    from edge.config import SourceConfig
    from edge.sources import SourceContext
    from edge.sources.replay import ReplaySource

    found = {}
    for declared in (None, "CR"):
        sink = MemorySink()
        src = ReplaySource(SourceConfig(name="s", kind="replay", model="cxr", path=f, realtime=False,
                                        default_modality=declared), SourceContext(tmp_path))
        pl = build_pipeline(src, lm, "cart-1", None, sink, Metrics()).start()
        assert pl.join(30)
        found[declared] = ([x.label for x in sink.found.values()], dict(pl.refusal_details))
    assert found[None][0] == [] and "no modality" in found[None][1]["modality"]
    assert found["CR"] == (["focal_opacity"], {})
    lm.close()


def test_inspect_with_a_profile_says_which_models_would_read_a_file(tmp_path):
    p = _profile(tmp_path, [{"name": "s", "kind": "dicom-folder", "path": str(tmp_path), "model": "cxr"}])
    lines: list[str] = []
    assert inspect_file(MR, config=p, echo=lines.append) == 1
    assert "NOT READ by any model" in lines[0]
    assert "  model cxr: would NOT read it: modality MR; the model is for CR, DX" in lines
    lines.clear()
    assert inspect_file(SAMPLES / "us_cine.dcm", config=p, echo=lines.append) == 0
    assert any(ln.startswith("  model us: would read it") for ln in lines)
    assert any("model cxr: would NOT read it" in ln and "BodyPartExamined ABDOMEN" in ln for ln in lines)


def test_bundle_before_intended_use_loads_with_a_warning(tmp_path):
    b = load_bundle(write_bundle(tmp_path / "old"))
    assert b.manifest.schema_version == 1 and b.manifest.intended_use is None
    assert "declares no intended use" in b.manifest.legacy_warning


@pytest.mark.parametrize("edit, message", [
    (lambda u: u.update(modalitys=["CR"]), "intended_use: unknown key(s) modalitys"),
    (lambda u: u.update(pixel_spacing_mm=[0.5, 0.1]), "intended_use.pixel_spacing_mm [0.5, 0.1] is an impossible range"),
    (lambda u: u.update(rows=[-1, 10]), "intended_use.rows [-1, 10] is an impossible range"),
    (lambda u: u.update(colour="purple"), "intended_use.colour 'purple' is not one of grey, colour, any"),
])
def test_manifest_with_a_bad_intended_use_is_refused_in_one_line(tmp_path, edit, message):
    root = tmp_path / "b"
    shutil.copytree(BUNDLES / "cxr-opacity", root)
    m = yaml.safe_load((root / "manifest.yaml").read_text())
    edit(m["intended_use"])
    (root / "manifest.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(BundleError) as e:
        load_bundle(root)
    assert message in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- drift


class Frames:
    """A finite source of ready-made frames (the Source protocol)."""

    def __init__(self, frames: list[Frame], name: str = "cart") -> None:
        self.name, self._frames = name, frames
        from edge.sources import SourceStats

        self.stats = SourceStats()

    def frames(self, stop: threading.Event):
        for f in self._frames:
            f.captured_at = time.monotonic()
            yield f

    def complete(self, frame, ok):
        pass

    def close(self):
        pass


def _cines(n: int, shift=None) -> list[Frame]:
    from models import synth_ultrasound as sus

    out = []
    for c in range(n):
        cine = sus.make_cine(7300 + c, n_frames=40, schedule=(0.2, 0.9), n_pockets=1)
        for i, img in enumerate(cine.frames):
            px = img if shift is None else shift(img)
            out.append(Frame(pixels=px, modality="US", source="cart", index=i, spacing_mm=(cine.spacing_mm,) * 2,
                             origin=Path(f"cine{c}.dcm"), frame_count=40))  # recorded cines: every frame is read
    return out


def _run_us(frames: list[Frame], tmp_path: Path) -> tuple[MemorySink, object]:
    lm = load_model_dir(BUNDLES / "us-free-fluid", None, KEYS, logging.getLogger("t"))
    sink = MemorySink()
    pl = build_pipeline(Frames(frames), lm, "cart-1", None, sink, Metrics(),
                        PipelineSettings(on_frames=2, off_frames=3, smoothing_window=3), monitoring=MonitorSettings(),
                        monitor_dir=tmp_path / "monitor").start()
    assert pl.join(120)
    lm.close()
    return sink, pl


def test_in_distribution_cines_raise_no_drift_event(tmp_path):
    sink, pl = _run_us(_cines(4), tmp_path)
    assert sink.events == {} and pl.monitor.state == "ok" and pl.monitor.ood_frames == 0
    assert sink.found and not any(any(r.startswith("out of distribution") for r in f.review_reasons)
                                  for f in sink.found.values())


def test_a_gain_shift_raises_one_drift_event_and_its_findings_need_review_with_the_reason(tmp_path):
    gain = lambda img: np.clip(img.astype(np.float32) * 1.6, 0, 255).astype(np.uint8)  # noqa: E731
    sink, pl = _run_us(_cines(4, gain), tmp_path)
    drift = [e for e in sink.events.values() if isinstance(e, DeviceEvent) and e.kind == "drift"]
    assert len(drift) == 1  # one event for a persistent shift, not one per frame
    (ev,) = drift
    s = MonitorSettings()
    assert ev.priority == "routine" and ev.measurements["frames"] == s.min_frames + s.persist_frames - 1
    assert ev.measurements["window_psi"] > ev.measurements["drift_psi"] and "check probe, preset, gain" in ev.detail
    assert sink.found and all(f.needs_review and any(r.startswith("out of distribution: input intensity PSI")
                                                     for r in f.review_reasons) for f in sink.found.values())
    # the monitor command reads what the pipeline wrote, and draws it
    prof = _profile(tmp_path, [{"name": "cart", "kind": "video", "device": 0, "model": "us"}])
    cfg = load_config(prof, data_dir=tmp_path, check_files=False)
    lines: list[str] = []
    assert run_monitor(cfg, tmp_path / "drift.png", echo=lines.append) == 1  # 1: a model is in drift
    assert lines[0].startswith("cart  us-free-fluid 1.0.0: DRIFT  window PSI") and "drift events 1" in lines[0]
    import cv2

    img = cv2.imread(str(tmp_path / "drift.png"))
    assert img is not None and img.shape[0] > 100 and len(np.unique(img.reshape(-1, 3), axis=0)) > 3


def test_a_drift_raise_on_a_frame_that_never_reaches_the_post_stage_is_still_reported():
    """Live video drops frames between stages: the raise is held by the monitor, not by the frame."""
    b = load_bundle(BUNDLES / "us-free-fluid")
    from edge.inference.drift import DriftMonitor
    from edge.inference.preprocess import Preprocessor

    mon = DriftMonitor(b.manifest.reference, MonitorSettings())
    pre = Preprocessor(b.manifest.preprocess)
    from models import synth_ultrasound as sus

    cine = sus.make_cine(7400, n_frames=60)
    raised = None
    for img in cine.frames:
        chk = mon.observe(pre.apply(Frame(pixels=np.clip(img.astype(np.float32) * 1.6, 0, 255).astype(np.uint8),
                                          modality="US", source="s"))[0], streaming=True)
        raised = raised or (chk if chk.change == "raised" else None)
    assert raised is not None  # that frame is now "dropped": nobody reports it
    pending = mon.take_change()
    assert pending is not None and pending.change == "raised" and pending.frames == raised.frames
    assert mon.take_change() is None
    mon.put_back(pending)  # storing the event failed: the next frame reports it
    assert mon.take_change() is pending


def test_a_schema2_bundle_that_names_no_modality_is_refused(tmp_path):
    root = tmp_path / "b"
    shutil.copytree(BUNDLES / "cxr-opacity", root)
    m = yaml.safe_load((root / "manifest.yaml").read_text())
    m["intended_use"] = {}
    (root / "manifest.yaml").write_text(yaml.safe_dump(m))
    with pytest.raises(BundleError, match="intended_use.modalities is empty"):
        load_bundle(root)
