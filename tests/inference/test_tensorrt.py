"""TensorRT engine build from a bundle's QDQ model. Needs an NVIDIA GPU and TensorRT; skips otherwise."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from edge.errors import BackendUnavailable


def _gpu_reason() -> str | None:
    from edge.inference.backends.engine_key import detect_gpu
    from export.tensorrt import import_tensorrt

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
    from edge.inference.backends.engine_key import detect_gpu, engine_name
    from export.make_bundle import ExportOptions, run_export
    from export.tensorrt import build_engine
    from tests.support.export_inputs import model_spec, quiet, save_model, write_images

    calib, val = tmp_path / "calib", tmp_path / "val"
    write_images(calib, 8, seed=1)
    write_images(val, 4, seed=2)
    (val / "masks").mkdir()
    for p in val.glob("*.png"):
        shutil.copy(p, val / "masks" / f"{p.name}.png")
    model = save_model(tmp_path / "m", unet(size=32, widths=(8, 16, 32), up="convtranspose"),
                  model_spec("segment", "trt-seg", "mask_logits"))
    out = tmp_path / "bundle"
    run_export(ExportOptions(model=model, calib=calib, val=val, out=out, target="tensorrt", latency_runs=3, max_drop=1.0),
               log=quiet)
    plan = build_engine(out, variant="int8", log=quiet)
    assert plan.name == engine_name(detect_gpu(), trt.__version__, "int8") and plan.stat().st_size > 0
    assert (out / "engines" / "timing.cache").exists()
    mtime = plan.stat().st_mtime
    assert build_engine(out, variant="int8", log=quiet) == plan and plan.stat().st_mtime == mtime  # reused


def test_device_loads_only_the_engine_keyed_for_its_gpu_trt_precision_and_dla(tmp_path):
    """Runs without a GPU: the key rule is shared by export and device, and a foreign engine is refused."""
    from edge.inference.backends.engine_key import GpuInfo, engine_name
    from edge.inference.backends.tensorrt import find_engine
    from edge.inference.bundle import load_bundle

    root = tmp_path / "b"
    shutil.copytree("models/bundles/us-free-fluid", root, ignore=shutil.ignore_patterns("engines"))  # a local cache
    bundle = load_bundle(root)
    orin = GpuInfo("Orin (nvgpu)", (8, 7))
    precision = bundle.variant(None).precision
    name = engine_name(orin, "10.3.0", precision)
    assert name == f"orin-nvgpu-sm87-trt10.3.0-{precision}.plan"
    assert engine_name(orin, "10.3.0", precision, 0) == f"orin-nvgpu-sm87-trt10.3.0-{precision}-dla0.plan"

    with pytest.raises(BackendUnavailable, match="no TensorRT engine .* build it here"):
        find_engine(bundle, None, None, orin, "10.3.0")
    (root / "engines").mkdir()
    for other in (engine_name(orin, "8.6.2", precision), engine_name(GpuInfo("NVIDIA A2", (8, 6)), "10.3.0", precision),
                  engine_name(orin, "10.3.0", precision, 1)):
        (root / "engines" / other).write_bytes(b"plan")
    with pytest.raises(BackendUnavailable, match=r"orin-nvgpu-sm87-trt10\.3\.0-.*holds .*trt8\.6\.2"):
        find_engine(bundle, None, None, orin, "10.3.0")  # an older JetPack's engine is never loaded
    (root / "engines" / name).write_bytes(b"plan")
    assert find_engine(bundle, None, None, orin, "10.3.0").name == name
    assert find_engine(bundle, None, 1, orin, "10.3.0").name.endswith("-dla1.plan")
    assert load_bundle(root).manifest == bundle.manifest  # engines/ is a cache outside the hashed files
