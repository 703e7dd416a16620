"""`medge bench`: real runs on a tiny bundle through the device's backend builder, and gpu_check.sh's
CPU-only path. No timing claims (shared machines are noisy) beyond positivity and order."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edge.commands.bench import ISA_FLAGS, cpu_info, representative_input, run_bench
from edge.errors import ConfigError
from edge.inference.bundle import load_bundle
from tests.support import ROOT
from tests.support.bundles import write_bundle

HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
LABELS = ("model", "ran on", "input", "latency", "throughput", "cpu")


def _medge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bench") / "toy", task="classify", size=32, name="toy-cls")


def _json(*args: str) -> dict:
    r = _medge("bench", *args, "--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1, r.stdout  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medge: error: "), r.stderr
    return lines[0]


def test_human_output_names_what_ran_and_the_numbers(bundle):
    r = _medge("bench", "--bundle", str(bundle), "--runs", "5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split("  ")[0].strip() for ln in lines] == list(LABELS)
    starts = {ln[: ln.index("  ")].strip(): ln for ln in lines}
    columns = {len(ln) - len(ln[ln.index("  "):].lstrip()) for ln in lines}
    assert len(columns) == 1  # aligned: every value starts in the same column
    sha = load_bundle(bundle).model_sha256()
    assert f"toy-cls 0.0.1 fp32, sha256 {sha[:16]}, unsigned" in starts["model"]
    assert "onnxruntime/cpu (asked: cpu), 2 intra-op thread(s)" in starts["ran on"]
    assert "1x1x32x32 float32, uniform over the normalised input range" in starts["input"]
    assert "(5 runs after 10 warm-up)" in starts["latency"] and "ms" in starts["latency"]
    assert "fps (1000/median)" in starts["throughput"] and "runs/s sustained" in starts["throughput"]
    assert "ISA" in starts["cpu"]


def test_json_reports_provider_latency_order_and_machine(bundle):
    d = _json("--bundle", str(bundle), "--runs", "5", "--warmup", "1", "--providers", "cpu", "--threads", "1")
    b = load_bundle(bundle)
    assert (d["backend"], d["provider"], d["providers"], d["fallbacks"], d["warnings"]) == \
        ("onnxruntime", "cpu", ["cpu"], [], [])
    assert (d["variant"], d["precision"], d["threads"], d["runs"], d["warmup"]) == ("fp32", "fp32", 1, 5, 1)
    assert d["sha256"] == b.model_sha256("fp32") and d["model"] == "toy-cls 0.0.1"
    lat = d["latency_ms"]
    assert set(lat) == {"median", "p90", "p99", "min", "mean", "max"}
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"]
    assert d["fps"] == pytest.approx(1000 / lat["median"], rel=0.01) and d["sustained_fps"] > 0
    assert d["input"]["shape"] == [1, 1, 32, 32] and d["input"]["dtype"] == "float32"
    assert set(d["isa"]) <= set(ISA_FLAGS)
    assert {"cpu", "arch", "cpus", "python", "onnxruntime"} <= set(d["machine"]) and "gpu" not in d["machine"]


def test_unknown_provider_is_one_line():
    line = _one_line_error(_medge("bench", "--bundle", "models/bundles/cxr-opacity", "--providers", "cpu,gpu"))
    assert "unknown provider 'gpu'" in line and "trt-native" in line  # says what the choices are


def test_missing_bundle_and_unknown_variant_are_one_line(bundle, tmp_path):
    assert "bundle folder not found" in _one_line_error(_medge("bench", "--bundle", str(tmp_path / "nope")))
    line = _one_line_error(_medge("bench", "--bundle", str(bundle), "--variant", "int4"))
    assert "--variant 'int4'" in line and "int8, fp32, fp16" in line
    line = _one_line_error(_medge("bench", "--bundle", str(bundle), "--variant", "int8"))
    assert "no 'int8' variant (has fp32)" in line


@pytest.mark.skipif(HAS_CUDA_EP, reason="this onnxruntime has a CUDA provider: cuda would run")
def test_unavailable_provider_falls_back_with_the_devices_reason(bundle):
    d = _json("--bundle", str(bundle), "--runs", "5", "--providers", "cuda,cpu")
    assert d["provider"] == "cpu" and d["providers"] == ["cuda", "cpu"]  # what ran, not what was asked for
    assert len(d["fallbacks"]) == 1 and "cuda skipped" in d["fallbacks"][0]
    assert "no CUDA execution provider" in d["fallbacks"][0]
    assert d["warnings"] == ["cuda did not run this model; these numbers are cpu's"]
    r = _medge("bench", "--bundle", str(bundle), "--runs", "5", "--providers", "cuda,cpu")
    assert r.returncode == 0 and "fallback" in r.stdout and "cuda skipped" in r.stdout
    line = _one_line_error(_medge("bench", "--bundle", str(bundle), "--providers", "cuda"))
    assert "no usable inference provider" in line and "cuda" in line


def test_signature_is_verified_when_a_key_is_given(signed_bundle, tmp_path):
    d = _json("--bundle", str(signed_bundle.bundle), "--runs", "3", "--trusted-key", str(signed_bundle.public_key))
    assert d["signature"].startswith("signed by ")
    other = write_bundle(tmp_path / "unsigned")
    line = _one_line_error(_medge("bench", "--bundle", str(other), "--trusted-key", str(signed_bundle.public_key)))
    assert "not signed" in line


def test_flag_values_are_checked_before_loading(bundle):
    for kw, flag in (({"runs": 0}, "--runs 0"), ({"threads": 0}, "--threads 0"), ({"warmup": -1}, "--warmup -1")):
        with pytest.raises(ConfigError, match=flag):
            run_bench(bundle, **kw)
    with pytest.raises(ConfigError, match="name at least one provider"):
        run_bench(bundle, providers=" , ")


def test_input_is_deterministic_and_within_what_preprocessing_can_make():
    b = load_bundle(ROOT / "models" / "bundles" / "cxr-opacity")
    x, how = representative_input(b)
    y, _ = representative_input(b)
    assert np.array_equal(x, y) and x.dtype == np.float32 and x.shape == (1, 1, 224, 224)
    spec = b.manifest.preprocess
    lo, hi = (0 - spec.mean[0]) / spec.std[0], (1 - spec.mean[0]) / spec.std[0]
    assert lo - 1e-6 <= x.min() and x.max() <= hi + 1e-6 and x.std() > 0.1  # not a constant tensor
    ref = b.manifest.reference
    assert "reference statistics" in how and abs(float(x.mean()) - ref.tensor_mean[0]) < 0.25


def test_reference_bundle_runs_int8_and_reports_the_cpu(tmp_path):
    res = run_bench(ROOT / "models" / "bundles" / "cxr-opacity", runs=5, warmup=1)
    assert (res.variant, res.precision, res.provider) == ("int8", "int8", "cpu")
    assert 0 < res.latency_ms["min"] <= res.latency_ms["median"] <= res.latency_ms["p99"]
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu\n")
    assert cpu_info(cpuinfo) == ("Test CPU 9000", ["avx2", "avx512f", "avx512_vnni", "amx_tile"])
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp\n\nModel\t: NVIDIA Jetson Orin Nano\n")
    assert cpu_info(arm) == ("NVIDIA Jetson Orin Nano", ["asimddp"])


GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def _gpu_check(bin_dir: Path) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    assert bash
    env = {**os.environ, "PATH": str(bin_dir), "HOME": str(bin_dir.parent)}  # PATH: nothing but bin_dir
    return subprocess.run([bash, str(GPU_CHECK)], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def test_gpu_check_without_nvidia_smi_says_so_and_does_nothing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    r = _gpu_check(bin_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "gpu_check: no NVIDIA GPU present (nvidia-smi not found); nothing to check on this machine"
    assert r.stderr == "" and sorted(p.name for p in tmp_path.iterdir()) == ["bin"]  # no venv, no work folder


def _fake_smi(bin_dir: Path, text: str, code: int) -> None:
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!{shutil.which('sh')}\necho {shlex.quote(text)}\nexit {code}\n")
    smi.chmod(0o755)
    os.symlink(shutil.which("timeout"), bin_dir / "timeout")


def test_gpu_check_with_a_broken_driver_fails_in_one_line(tmp_path):
    _fake_smi(tmp_path / "bin", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", 9)
    r = _gpu_check(tmp_path / "bin")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == ("gpu_check: nvidia-smi is installed but fails (exit 9: NVIDIA-SMI has failed because it "
                                "couldn't communicate with the NVIDIA driver.); is the NVIDIA driver loaded?")


def test_gpu_check_with_no_device_listed_is_a_cpu_machine(tmp_path):
    _fake_smi(tmp_path / "bin", "No devices were found", 6)
    r = _gpu_check(tmp_path / "bin")
    assert r.returncode == 0 and "no NVIDIA GPU present" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]
