"""Firmware profiles: the shipped ones validate, broken ones are refused with one precise line."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.config import load_config
from edge.errors import ConfigError
from tests.support import ROOT

PROFILES = sorted((ROOT / "firmware_configs").glob("*.yaml"))


def test_profiles_exist():
    names = {p.name for p in PROFILES}
    assert {"demo.yaml", "pocus-cart.yaml", "ambulance-xray.yaml", "field-clinic.yaml"} <= names


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_shipped_profiles_are_valid(profile):
    cfg = load_config(profile, check_files=False)
    assert cfg.models and cfg.sources
    for s in cfg.sources:
        assert cfg.model(s.model)


def test_demo_profile_is_complete_on_this_machine():
    if not (ROOT / "models" / "bundles" / "us-free-fluid").is_dir():
        pytest.skip("demo bundles not built yet (models/build_bundles.py)")
    """The demo profile points at files in this repository, so even the file checks pass."""
    cfg = load_config(ROOT / "firmware_configs" / "demo.yaml")
    assert cfg.sync.enabled is False
    assert all(m.require_signature for m in cfg.models)


def _write(tmp_path, data) -> Path:
    p = tmp_path / "profile.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _base(tmp_path) -> dict:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "cine.dcm").write_bytes(b"x")
    return {
        "device": {"id": "d1", "site": "s1"},
        "models": [{"name": "m", "bundle": "bundle", "require_signature": False}],
        "sources": [{"name": "s", "kind": "replay", "path": "cine.dcm", "model": "m"}],
    }


def test_minimal_profile_resolves_paths_relative_to_profile(tmp_path):
    cfg = load_config(_write(tmp_path, _base(tmp_path)))
    assert cfg.models[0].bundle == tmp_path / "bundle"
    assert cfg.sources[0].path == tmp_path / "cine.dcm"
    assert cfg.models[0].intra_op_threads == 2


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d["models"][0].update(intra_op_thread=2), "models[0].intra_op_thread: unknown key; did you mean 'intra_op_threads'?"),
        (lambda d: d["models"][0].update(intra_op_threads="two"), "models[0].intra_op_threads: expected a whole number, got 'two'"),
        (lambda d: d["models"][0].update(intra_op_threads=0), "models[0].intra_op_threads: 0 is too small; use a value >= 1"),
        (lambda d: d["models"][0].update(bundle="missing"), "models[0].bundle: folder missing does not exist"),
        (lambda d: d["models"][0].update(bundle="cine.dcm"), "models[0].bundle: is a file; a bundle is a folder"),
        (lambda d: d["sources"][0].update(kind="usb"), "sources[0].kind: 'usb' is not allowed; use one of video, dicom-folder"),
        (lambda d: d["sources"][0].update(modality="MR"), "sources[0].modality: 'MR' is not allowed; use one of US, ES, XA, OT"),
        (lambda d: d["sources"][0].update(model="nope"), "sources[0].model: no model named 'nope'; use one of m"),
        (lambda d: d.pop("device"), "device: required key is missing"),
        (lambda d: d["device"].pop("site"), "device.site: required key is missing"),
        (lambda d: d["models"][0].update(providers=["gpu"]), "models[0].providers[0]: 'gpu' is not a known provider"),
        (lambda d: d["models"][0].update(require_signature=True), "models[0].require_signature: is true but trusted_keys is empty"),
        (lambda d: d.update(sync={"enabled": True, "broker": "http://x"}), "sync.broker: 'http://x' is not an MQTT URL"),
        (lambda d: d.update(sync={"enabled": True, "broker": "mqtts://h:8883"}), "sync.ca_file: mqtts:// needs the broker's CA certificate"),
        (lambda d: d.update(sources=[{"name": "s", "kind": "dicom-store", "model": "m"}]), "sources[0].allowed_aes: is empty"),
        (lambda d: d.update(schema_version=7), "schema_version: 7 is not supported"),
        (lambda d: d.update(sync={"enabled": "yes"}), "sync.enabled: expected true or false, got 'yes'"),
        (lambda d: d.update(models={"name": "m"}), "models: expected a list, got a mapping"),
    ],
)
def test_broken_profiles_refused_with_key_path(tmp_path, mutate, expect):
    data = _base(tmp_path)
    mutate(data)
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    first, *rest = ei.value.problems
    assert all("\n" not in line and line.startswith(f"{p}: ") for line in ei.value.problems)
    assert expect in first
    assert not rest or rest == [f"{p}: files the profile names are missing here; checking a device's profile on a "
                                "workstation? use 'medge config check --structure-only'"]


def test_every_problem_in_one_pass_including_what_run_would_refuse(tmp_path):
    """What config check passes, run accepts: topic levels, TLS and password files, the data folder."""
    data = _base(tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate")
    data.update(device={"id": "amb 7/unit+b", "site": ""}, data_dir=str(tmp_path / "junk.pem" / "data"),
                pipeline={"on_frames": 9, "smoothing_window": 5, "queue_depth": "many"},
                sync={"enabled": True, "broker": "mqtts://user:pw@h:8883", "ca_file": "junk.pem"})
    data["models"][0].update(intra_op_threads=0, warmup_runs=-1)
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    lines = ei.value.problems
    text = "\n".join(lines)
    for want in ("models[0].intra_op_threads: 0 is too small", "models[0].warmup_runs: -1 is too small",
                 "pipeline.queue_depth: expected a whole number, got 'many'"):
        assert want in text, text
    assert len(lines) == 3  # the structure is wrong: relations and start checks wait for a profile that builds
    data["models"][0].update(intra_op_threads=1, warmup_runs=1)
    data["pipeline"].pop("queue_depth")
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    text = "\n".join(ei.value.problems)
    for want in ("device.id: 'amb 7/unit+b' cannot be part of an MQTT topic", "device.site: '' cannot be part of an MQTT topic",
                 "pipeline.on_frames: 9 is larger than smoothing_window 5", "sync.broker: broker URL must not contain credentials",
                 "junk.pem: not a usable CA certificate", "junk.pem is not a folder"):
        assert want in text, text
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == len(ei.value.problems)
    assert all(ln.startswith("medge: error: ") for ln in r.stderr.strip().splitlines())
    r = subprocess.run([sys.executable, "-m", "edge.cli", "run", "--config", str(p)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stderr == subprocess.run(
        [sys.executable, "-m", "edge.cli", "config", "check", str(p)], capture_output=True, text=True).stderr


def test_missing_device_files_suggest_structure_only(tmp_path):
    data = _base(tmp_path)
    data["models"][0]["bundle"] = "/opt/medge/bundles/nope"
    data["trusted_keys"] = ["/etc/medge/keys/nope.pem"]
    p = _write(tmp_path, data)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "use 'medge config check --structure-only'" in r.stderr.splitlines()[-1]
    assert "models[0].bundle" in r.stderr and "trusted_keys[0]" in r.stderr
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", "--structure-only", str(p)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_an_onnx_model_named_as_bundle_says_to_export_it_first(tmp_path):
    data = _base(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    data["models"][0]["bundle"] = "model.onnx"
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.problems == [f"{p}: models[0].bundle: is an ONNX model, not a bundle; make a bundle from it first: "
                                 "medge export quantize model.onnx --calib IMAGES_DIR"]
    r = subprocess.run([sys.executable, "-m", "edge.cli", "replay", str(tmp_path / "cine.dcm"), "--bundle",
                        str(tmp_path / "model.onnx")], capture_output=True, text=True)
    assert r.returncode == 2 and "make a bundle from it first: medge export quantize" in r.stderr


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("device:\n  id: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d+"):
        load_config(p)


def test_cli_config_check_rejects_broken_profile(tmp_path):
    data = _base(tmp_path)
    data["models"][0]["warmup_runs"] = -1
    p = _write(tmp_path, data)
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", str(p)], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"medge: error: {p}: models[0].warmup_runs: -1 is too small; use a value >= 0"


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_cli_config_check_structure_only(profile):
    r = subprocess.run([sys.executable, "-m", "edge.cli", "config", "check", "--structure-only", str(profile)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
