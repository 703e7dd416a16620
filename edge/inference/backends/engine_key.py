"""Which TensorRT engine file belongs to this GPU: one naming rule shared by export and the device.

A serialized engine only runs on the GPU model, compute capability and TensorRT version it was built
with, so its name carries all of them plus the precision and the DLA core
(``<gpu>-sm<major><minor>-trt<version>-<precision>[-dla<N>].plan``). `medge export build-engine` writes
that name; the device computes the same name for itself and loads only an exact match, so a JetPack
upgrade or a moved SD card leads to "rebuild the engine", never to a crash inside TensorRT.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edge.errors import BackendUnavailable


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]


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
                             "be built on and run by the GPU they are for")


def engine_name(gpu: GpuInfo, trt_version: str, precision: str, dla_core: int | None = None) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.name.lower()).strip("-")
    dla = f"-dla{dla_core}" if dla_core is not None else ""
    return f"{slug}-sm{gpu.compute_capability[0]}{gpu.compute_capability[1]}-trt{trt_version}-{precision}{dla}.plan"
