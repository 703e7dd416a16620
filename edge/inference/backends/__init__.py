"""Inference backends behind one small interface.

The pipeline only ever calls `Backend.run`; which engine does the work (ONNX Runtime with TensorRT, CUDA
or CPU execution providers, a native TensorRT engine, or OpenVINO on x86 CPUs and Intel GPUs) is decided
once at start from the profile's ordered provider list, so a cart with a GPU and a field-clinic mini-PC
run the same code. A provider that is not usable on this machine is skipped with a logged reason rather
than failing the start, because a device that falls back to CPU still helps; only when nothing at all
works is it an error. A cpu bundle runs only on the CPU runtimes its accuracy gate passed on (manifest
``runtimes``).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from edge.errors import BackendUnavailable

if TYPE_CHECKING:
    from edge.config import ModelConfig
    from edge.inference.bundle import Bundle


@runtime_checkable
class Backend(Protocol):
    name: str  # e.g. "onnxruntime" or "tensorrt"
    provider: str  # what actually runs the model: "cpu", "cuda", "tensorrt", "trt-native"
    input_name: str

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Loader:
    """A backend implementation (Polygraphy's loader): ``from_bundle(bundle, model_cfg, providers, log,
    allow_spinning)`` returns a warmed-up `Backend` or raises `BackendUnavailable` with the reason."""

    module: str
    cls: str

    def load(self):
        return getattr(importlib.import_module(self.module), self.cls)


@dataclass(frozen=True)
class Provider:
    """A name a profile may list under ``models[].providers``."""

    name: str
    loader: str  # key in LOADERS; consecutive providers of one loader are tried together
    gpu: bool  # needs an NVIDIA GPU (doctor warns when there is none)
    ort_name: str | None = None  # the ONNX Runtime execution provider, for the onnxruntime loader
    unavailable: str = "not available in this onnxruntime build"  # what to tell the operator


LOADERS = {
    "onnxruntime": Loader("edge.inference.backends.onnxruntime", "OrtBackend"),
    "tensorrt": Loader("edge.inference.backends.tensorrt", "TensorRTBackend"),
    "openvino": Loader("edge.inference.backends.openvino", "OpenVinoBackend"),
}
PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("tensorrt", "onnxruntime", True, "TensorrtExecutionProvider",
             "this onnxruntime build has no TensorRT execution provider (needs onnxruntime-gpu and TensorRT libraries)"),
    Provider("cuda", "onnxruntime", True, "CUDAExecutionProvider",
             "this onnxruntime build has no CUDA execution provider (needs onnxruntime-gpu and a CUDA GPU)"),
    Provider("cpu", "onnxruntime", False, "CPUExecutionProvider"),
    Provider("trt-native", "tensorrt", True),
    Provider("openvino", "openvino", False, unavailable="OpenVINO is not installed (pip install 'medge[openvino]')"),
    Provider("openvino-gpu", "openvino", False, unavailable="OpenVINO is not installed, or no Intel GPU is present"),
)}


def build_backend(bundle: Bundle, model_cfg: ModelConfig, logger: logging.Logger | None = None,
                  allow_spinning: bool = False) -> Backend:
    """Try the profile's providers in order; the first loader that loads and warms up wins.

    Consecutive providers served by the same loader are handed to it together (ONNX Runtime takes one
    ordered list, so it can assign nodes the preferred provider cannot run to the next one).
    """
    log = logger or logging.getLogger("medge.backend")
    providers = list(model_cfg.providers) or ["cpu"]
    groups: list[tuple[str, list[str]]] = []
    for p in providers:
        loader = PROVIDERS[p].loader
        if groups and groups[-1][0] == loader:
            groups[-1][1].append(p)
        else:
            groups.append((loader, [p]))
    reasons: list[str] = []
    for loader, names in groups:
        try:
            return LOADERS[loader].load().from_bundle(bundle, model_cfg, names, log, allow_spinning)
        except BackendUnavailable as e:
            log.warning("model %s: %s skipped: %s", model_cfg.name, ", ".join(names), e)
            reasons.append(f"{', '.join(names)}: {e}")
    raise BackendUnavailable(f"model {model_cfg.name!r}: no usable inference provider ({'; '.join(reasons)})")


__all__ = ["LOADERS", "PROVIDERS", "Backend", "Loader", "Provider", "build_backend"]
