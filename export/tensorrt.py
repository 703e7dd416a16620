"""`medge export build-engine`: a TensorRT engine from the bundle's QDQ (or FP16/FP32) ONNX model.

The engine's file name is the key `edge.inference.backends.engine_key.engine_name` defines (GPU, compute capability,
TensorRT version, precision, DLA core); the device computes the same key and loads only an exact match,
so an engine is reused when it matches and rebuilt when any part changed (new JetPack, different
module). The engines/ folder is a cache outside the bundle's hashed file set. A timing cache next to
the engines makes rebuilds fast. INT8 comes from the explicit Q/DQ nodes of the `tensorrt` recipe (no calibrator); with
TensorRT >= 10 the network is built strongly typed, so the Q/DQ placement alone decides precision.
"""

from __future__ import annotations

from pathlib import Path

from edge.durable_files import write_atomic
from edge.errors import BackendUnavailable, BundleError
from edge.inference.backends.engine_key import detect_gpu, engine_name
from edge.inference.bundle import load_bundle


def import_tensorrt():
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed (pip install 'medge[tensorrt]' on a machine with an "
                                 "NVIDIA GPU, or use JetPack's python3-libnvinfer on Jetson)") from None
    return trt


def build_engine(bundle_dir: Path, variant: str | None = None, dla_core: int | None = None,
                 workspace_mb: int = 1024, rebuild: bool = False, log=print) -> Path:
    trt = import_tensorrt()  # say what is missing before anything else
    gpu = detect_gpu()
    bundle = load_bundle(bundle_dir)
    v = bundle.variant(variant)
    if bundle.manifest.target != "tensorrt" and v.precision == "int8":
        raise BundleError(f"{bundle_dir}: the int8 variant was quantized for target {bundle.manifest.target!r}, not "
                          "tensorrt; re-export with --target tensorrt or build the fp16 variant")
    out = bundle.engines_dir / engine_name(gpu, trt.__version__, v.precision, dla_core)
    if out.exists() and not rebuild:
        log(f"{out}: engine for this GPU/TensorRT/precision already exists (pass --rebuild to rebuild)")
        return out
    tlog = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(tlog)
    flags = 0
    strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    if strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, tlog)
    model_path = bundle.model_path(v.name)
    if not parser.parse(model_path.read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{model_path}: TensorRT cannot parse the model ({errs[:300]})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if not strongly_typed:
        if v.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if v.precision in ("int8", "fp16"):
            config.set_flag(trt.BuilderFlag.FP16)
    if dla_core is not None:
        if builder.num_DLA_cores <= dla_core:
            raise BackendUnavailable(f"DLA core {dla_core} requested but this GPU has {builder.num_DLA_cores} DLA core(s)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache_path = bundle.engines_dir / "timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"building {out.name} from {model_path.name} (strongly typed: {strongly_typed})")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BundleError(f"{model_path}: TensorRT engine build failed (see the TensorRT log above)")
    bundle.engines_dir.mkdir(exist_ok=True)
    write_atomic(out, bytes(plan))  # 0644: the device's service user loads it
    write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    return out
