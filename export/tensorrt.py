"""`medge export build-engine`: a TensorRT engine from the bundle's QDQ (or FP16/FP32) ONNX model.

A serialized engine only runs on the GPU model, compute capability and TensorRT version it was built
with, so the file name carries all of them plus the precision
(``engines/<gpu>-sm<major><minor>-trt<version>-<precision>.plan``): a device looks for its own key, reuses
the engine when it matches and rebuilds when any part changed (new JetPack, different module). The
engines/ folder is a cache outside the bundle's hashed file set. A timing cache next to the engines makes
rebuilds fast. INT8 comes from the explicit Q/DQ nodes of the `tensorrt` recipe (no calibrator); with
TensorRT >= 10 the network is built strongly typed, so the Q/DQ placement alone decides precision.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edge.bundle import load_bundle
from edge.errors import BackendUnavailable, BundleError

from .bundle_writer import atomic_write_bytes


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]


def import_tensorrt():
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed (pip install 'medge[tensorrt]' on a machine with an "
                                 "NVIDIA GPU, or use JetPack's python3-libnvinfer on Jetson)") from None
    return trt


def detect_gpu() -> GpuInfo:
    """Name and compute capability of GPU 0 via nvidia-smi (Jetson: the device-tree model name)."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout.strip().splitlines()
            if out:
                name, cc = (s.strip() for s in out[0].split(",", 1))
                major, minor = cc.split(".")
                return GpuInfo(name, (int(major), int(minor)))
        except (subprocess.SubprocessError, ValueError, OSError):
            pass
    model = Path("/proc/device-tree/model")
    if model.is_file() and "jetson" in model.read_text(errors="ignore").lower():
        name = model.read_text(errors="ignore").strip("\x00 \n")
        cc = (8, 7) if "orin" in name.lower() else (7, 2)
        return GpuInfo(name, cc)
    raise BackendUnavailable("no NVIDIA GPU found (nvidia-smi absent or reports no device); TensorRT engines can only "
                             "be built on the GPU that will run them")


def engine_name(gpu: GpuInfo, trt_version: str, precision: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-")
    return f"{slug}-sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}-trt{trt_version}-{precision}.plan"


def build_engine(bundle_dir: Path, variant: str | None = None, dla_core: int | None = None,
                 workspace_mb: int = 1024, rebuild: bool = False, log=print) -> Path:
    trt = import_tensorrt()  # say what is missing before anything else
    gpu = detect_gpu()
    bundle = load_bundle(bundle_dir)
    v = bundle.variant(variant)
    if bundle.manifest.target != "tensorrt" and v.precision == "int8":
        raise BundleError(f"{bundle_dir}: the int8 variant was quantized for target {bundle.manifest.target!r}, not "
                          "tensorrt; re-export with --target tensorrt or build the fp16 variant")
    out = bundle.engines_dir / engine_name(gpu, trt.__version__, v.precision)
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
        out = out.with_name(out.stem + f"-dla{dla_core}.plan")
    cache_path = bundle.engines_dir / "timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"building {out.name} from {model_path.name} (strongly typed: {strongly_typed})")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BundleError(f"{model_path}: TensorRT engine build failed (see the TensorRT log above)")
    bundle.engines_dir.mkdir(exist_ok=True)
    atomic_write_bytes(out, bytes(plan))
    atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    return out
