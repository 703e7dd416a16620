"""TensorRT engine build from a bundle's QDQ model. Needs an NVIDIA GPU and TensorRT; skips otherwise."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from edge.errors import BackendUnavailable


def _gpu_reason() -> str | None:
    from export.tensorrt import detect_gpu, import_tensorrt

    try:
        import_tensorrt()
        detect_gpu()
    except BackendUnavailable as e:
        return str(e)
    return None


REASON = _gpu_reason()


def test_build_engine_without_tensorrt_or_gpu_says_so(tmp_path):
    """Runs everywhere without TensorRT/GPU: the command names the missing piece in one line and exits non-zero."""
    if REASON is None:
        pytest.skip("this machine has TensorRT and a GPU; the absence message cannot be observed here")
    r = subprocess.run([sys.executable, "-c", "from edge.cli import main; main()", "export", "build-engine", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert r.stderr.strip() == f"medge: error: {REASON}"


@pytest.mark.gpu
@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_engine_is_built_keyed_and_reused(tmp_path):
    import tensorrt as trt

    from benchmarks.make_models import unet
    from export.make_bundle import ExportOptions, run_export
    from export.tensorrt import build_engine, detect_gpu, engine_name
    from tests.test_export import _images, _quiet, _save, _spec

    calib, val = tmp_path / "calib", tmp_path / "val"
    _images(calib, 8, seed=1)
    _images(val, 4, seed=2)
    (val / "masks").mkdir()
    for p in val.glob("*.png"):
        shutil.copy(p, val / "masks" / f"{p.name}.png")
    model = _save(tmp_path / "m", unet(size=32, widths=(8, 16, 32), up="convtranspose"),
                  _spec("segment", "trt-seg", "mask_logits"))
    out = tmp_path / "bundle"
    run_export(ExportOptions(model=model, calib=calib, val=val, out=out, target="tensorrt", latency_runs=3, max_drop=1.0),
               log=_quiet)
    plan = build_engine(out, variant="int8", log=_quiet)
    assert plan.name == engine_name(detect_gpu(), trt.__version__, "int8") and plan.stat().st_size > 0
    assert (out / "engines" / "timing.cache").exists()
    mtime = plan.stat().st_mtime
    assert build_engine(out, variant="int8", log=_quiet) == plan and plan.stat().st_mtime == mtime  # reused
