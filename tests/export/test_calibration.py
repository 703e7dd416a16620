"""export.quantize calibration: each method gives its own activation ranges, and the same inputs the same bytes.

ONNX Runtime's entropy calibrator, as `quantize_static` builds it, has one candidate threshold (128 histogram
bins, 128 quantized bins) and returned minmax's ranges; these tests read the ranges back from the INT8 graph
(QuantizeLinear scales and zero points) on calibration data with a long tail of outliers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.inference.preprocess import PreprocessSpec
from export import quantize as Q
from tests.support.export_inputs import PRE, random_classifier
from tests.support.files import sha256

METHODS = ("minmax", "entropy", "percentile")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> dict:
    """A prepared Conv-Relu-GAP-Gemm classifier and 24 calibration tensors: normal pixels, and in 0.1 % of
    them positive outliers from a Pareto tail (a few hot pixels far above the rest, as a saturated detector
    row or a burnt-in marker gives)."""
    root = tmp_path_factory.mktemp("calibration")
    onnx.save(random_classifier(seed=2), root / "src.onnx")
    fp32 = root / "fp32.onnx"
    Q.prepare_model(root / "src.onnx", fp32, PreprocessSpec.from_dict(PRE))
    Q.ensure_node_names(fp32)
    rng = np.random.default_rng(7)
    tensors = []
    for _ in range(24):
        x = rng.normal(0.0, 0.5, (1, 1, 32, 32)).astype(np.float32)
        hot = rng.random(x.shape) < 0.001
        x[hot] = (2.0 + 4.0 * rng.pareto(1.5, int(hot.sum()))).astype(np.float32)
        tensors.append(x)
    np.save(root / "tensors.npy", np.stack(tensors))
    models, ranges = {}, {}
    for m in METHODS:
        models[m] = root / f"int8-{m}.onnx"
        Q.quantize(fp32, models[m], Q.recipe_for("cpu", m), tensors, "input", root / f"cache-{m}.json")
        ranges[m] = Q.activation_ranges(onnx.load(str(models[m])))
    return {"root": root, "fp32": fp32, "tensors": tensors, "models": models, "ranges": ranges}


def _width(r: tuple[float, float]) -> float:
    return r[1] - r[0]


def test_each_method_gives_its_own_ranges_and_clips_the_outliers(calibrated):
    ranges, tensors = calibrated["ranges"], calibrated["tensors"]
    assert set(ranges["minmax"]) == set(ranges["entropy"]) == set(ranges["percentile"])
    top = float(max(t.max() for t in tensors))
    assert ranges["minmax"]["input"][1] == pytest.approx(top, rel=0.01)  # minmax: the largest outlier sets the range
    for t in ("input", "r"):  # the outlier-bearing tensors: the image and the conv (+ fused relu) it feeds
        widths = {m: _width(ranges[m][t]) for m in METHODS}
        assert len({round(w, 4) for w in widths.values()}) == 3, (t, widths)  # three methods, three scales
        assert widths["entropy"] < 0.6 * widths["minmax"], (t, widths)  # KL clips the tail hard
        assert widths["percentile"] < 0.99 * widths["minmax"], (t, widths)  # 0.005 % per side: the top outliers
    # tensors of a few hundred values (pooled features, logits) have no tail to clip: the methods may agree there
    files = {m: calibrated["models"][m].read_bytes() for m in METHODS}
    assert len(set(files.values())) == 3


def test_recipe_records_the_calibrator_settings(calibrated):
    r = Q.recipe_for("cpu", "entropy").to_dict()
    assert r["calibration"] == {"num_bins": 2048, "num_quantized_bins": 256, "symmetric": False}
    assert Q.recipe_for("cpu", "percentile").calibration == {"num_bins": 2048, "percentile": 99.99, "symmetric": False}
    assert Q.recipe_for("tensorrt", "minmax").calibration == {"symmetric": True}
    # the setting that collapsed entropy onto minmax: one candidate threshold, the whole histogram
    assert r["calibration"]["num_quantized_bins"] < r["calibration"]["num_bins"]


def test_same_inputs_give_a_byte_identical_int8_model(calibrated, tmp_path):
    fp32, tensors = calibrated["fp32"], calibrated["tensors"]
    for m in METHODS:  # calibrated afresh in this process: another cache file, the same bytes
        again = tmp_path / f"again-{m}.onnx"
        Q.quantize(fp32, again, Q.recipe_for("cpu", m), tensors, "input", tmp_path / f"cache-{m}.json")
        assert sha256(again) == sha256(calibrated["models"][m]), m
    # and in another interpreter with another hash seed (set and dict orders inside ORT's tools differ there)
    script = ("import sys, numpy as np; from pathlib import Path; from export import quantize as Q\n"
              "root, out = Path(sys.argv[1]), Path(sys.argv[2])\n"
              "ts = list(np.load(root / 'tensors.npy'))\n"
              "for m in ('minmax', 'entropy', 'percentile'):\n"
              "    Q.quantize(root / 'fp32.onnx', out / f'{m}.onnx', Q.recipe_for('cpu', m), ts, 'input', out / f'{m}.json')\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    r = subprocess.run([sys.executable, "-c", script, str(calibrated["root"]), str(tmp_path)], capture_output=True,
                       text=True, timeout=300, env=env, cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr[-2000:]
    for m in METHODS:
        assert sha256(tmp_path / f"{m}.onnx") == sha256(calibrated["models"][m]), m


def test_a_cache_from_other_settings_or_inputs_is_recomputed_not_reused(calibrated, tmp_path):
    fp32, tensors = calibrated["fp32"], calibrated["tensors"]
    cache = tmp_path / "calibration.json"
    Q.quantize(fp32, tmp_path / "a.onnx", Q.recipe_for("cpu", "minmax"), tensors, "input", cache)
    Q.quantize(fp32, tmp_path / "b.onnx", Q.recipe_for("cpu", "entropy"), tensors, "input", cache)  # same cache file
    assert sha256(tmp_path / "b.onnx") == sha256(calibrated["models"]["entropy"])
    top = max(float(t.max()) for t in tensors)
    fewer = [t for t in tensors if t.max() < top]  # other inputs: without the largest outlier
    Q.quantize(fp32, tmp_path / "c.onnx", Q.recipe_for("cpu", "minmax"), fewer, "input", cache)
    assert Q.activation_ranges(onnx.load(str(tmp_path / "c.onnx")))["input"] != calibrated["ranges"]["minmax"]["input"]
