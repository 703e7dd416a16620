"""Backends: ordered provider fallback with logged reasons, thread counts, warm-up, TensorRT absence."""

import logging
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from edge.config import ModelConfig
from edge.errors import BackendUnavailable, BundleError
from edge.inference.backends import Backend, build_backend
from edge.inference.backends.tensorrt import TensorRTBackend
from edge.inference.bundle import load_bundle
from tests.support.bundles import write_bundle

HAS_GPU = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture
def bundle(tmp_path):
    return load_bundle(write_bundle(tmp_path / "b"))


def _cfg(bundle, **kw):
    return ModelConfig(name="m", bundle=bundle.root, require_signature=False, **kw)


def test_cpu_backend_runs_real_session_with_profile_threads(bundle):
    be = build_backend(bundle, _cfg(bundle, intra_op_threads=1, warmup_runs=2))
    assert isinstance(be, Backend) and be.name == "onnxruntime" and be.provider == "cpu"
    assert len(be.warmup_ms) == 2
    opts = be.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    # worker threads must not busy-wait: the pipeline's other stages share these cores
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    x = np.full((1, 1, 64, 64), 0.75, np.float32)
    out = be.run(x)
    assert list(out) == ["logits"] and out["logits"].shape == (1, 1, 64, 64)
    assert out["logits"][0, 0, 0, 0] == pytest.approx(5.0)
    be.close()


@pytest.mark.skipif(HAS_GPU, reason="checks the fallback on a machine without CUDA/TensorRT")
def test_gpu_providers_fall_back_to_cpu_with_logged_reason(bundle, caplog):
    caplog.set_level(logging.INFO, logger="medge.backend")
    be = build_backend(bundle, _cfg(bundle, providers=("tensorrt", "cuda", "cpu")), logging.getLogger("medge.backend"))
    assert be.provider == "cpu"
    text = caplog.text
    assert "provider tensorrt skipped" in text and "no TensorRT execution provider" in text
    assert "provider cuda skipped" in text and "onnxruntime/cpu" in text


@pytest.mark.skipif(HAS_GPU, reason="checks the error on a machine without CUDA/TensorRT")
def test_no_usable_provider_is_one_clear_error(bundle):
    with pytest.raises(BackendUnavailable, match=r"model 'm': no usable inference provider .*trt-native: .*cuda"):
        build_backend(bundle, _cfg(bundle, providers=("trt-native", "cuda")))


def test_trt_native_absent_is_backend_unavailable(bundle):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this test checks the message on machines without it")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        TensorRTBackend.from_bundle(bundle, _cfg(bundle, providers=("trt-native",)), ["trt-native"], logging.getLogger("t"))
    # and the chain moves on to the CPU
    assert build_backend(bundle, _cfg(bundle, providers=("trt-native", "cpu"))).provider == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs onnxruntime-gpu with a CUDA GPU (not present on this machine)")
def test_tensorrt_engine_cache_lands_in_bundle(bundle):
    be = build_backend(bundle, _cfg(bundle, providers=("tensorrt", "cuda", "cpu")))
    assert be.provider in ("tensorrt", "cuda")
    if be.provider == "tensorrt":
        assert any(bundle.engines_dir.iterdir())


def test_corrupt_model_file_names_the_file(tmp_path):
    root = write_bundle(tmp_path / "b")
    b = load_bundle(root)
    (root / "model.fp32.onnx").write_bytes(b"garbage")  # after verification: simulates a bad export
    with pytest.raises(BundleError, match=r"model.fp32.onnx: ONNX Runtime cannot load the model"):
        build_backend(b, _cfg(b))


def test_missing_variant_is_bundle_error(bundle):
    with pytest.raises(BundleError, match="no 'int8' variant"):
        build_backend(bundle, replace(_cfg(bundle), variant="int8"))


def test_int8_precision_mode_follows_the_bundle_recipe():
    """Full-range int8 weights saturate ORT's u8s8 kernels on x86 without VNNI: such bundles run in precision mode;
    7-bit (reduce_range) bundles keep the fast kernels. The export gate uses the same settings."""
    from edge.inference.backends.onnxruntime import exact_int8_needed, session_options

    assert exact_int8_needed({"reduce_range": True}) is False
    assert exact_int8_needed({"reduce_range": False}) is True and exact_int8_needed({}) is True  # older bundles
    for exact in (True, False):
        so = session_options(2, exact_int8=exact)
        assert so.get_session_config_entry("session.x64quantprecision") == ("1" if exact else "0")
        assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"

