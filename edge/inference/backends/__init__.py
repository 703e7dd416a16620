"""Inference backends behind one small interface.

The pipeline only ever calls `Backend.run`; which engine does the work (ONNX Runtime with TensorRT, CUDA
or CPU execution providers, or a native TensorRT engine) is decided once at start from the profile's
ordered provider list, so a cart with a GPU and a field-clinic mini-PC run the same code. A provider
that is not usable on this machine is skipped with a logged reason rather than failing the start,
because a device that falls back to CPU still helps; only when nothing at all works is it an error.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

import numpy as np

from edge.config import ModelConfig
from edge.errors import BackendUnavailable
from edge.inference.bundle import Bundle


@runtime_checkable
class Backend(Protocol):
    name: str  # e.g. "onnxruntime" or "tensorrt"
    provider: str  # what actually runs the model: "cpu", "cuda", "tensorrt", "trt-native"
    input_name: str

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def build_backend(bundle: Bundle, model_cfg: ModelConfig, logger: logging.Logger | None = None,
                  allow_spinning: bool = False) -> Backend:
    """Try the profile's providers in order; the first that loads and warms up wins.

    ``trt-native`` is handled by the native TensorRT runner; every other provider name is an ONNX
    Runtime execution provider, tried together as one ordered list so ORT can assign nodes the preferred
    provider cannot run to the next one.
    """
    log = logger or logging.getLogger("medge.backend")
    providers = list(model_cfg.providers) or ["cpu"]
    reasons: list[str] = []
    i = 0
    while i < len(providers):
        p = providers[i]
        if p == "trt-native":
            from edge.inference.backends.tensorrt import TensorRTBackend

            try:
                return TensorRTBackend.from_bundle(bundle, model_cfg, log)
            except BackendUnavailable as e:
                log.warning("model %s: trt-native skipped: %s", model_cfg.name, e)
                reasons.append(f"trt-native: {e}")
            i += 1
            continue
        j = i
        while j < len(providers) and providers[j] != "trt-native":
            j += 1
        from edge.inference.backends.onnxruntime import OrtBackend

        try:
            return OrtBackend.from_bundle(bundle, model_cfg, providers[i:j], log, allow_spinning)
        except BackendUnavailable as e:
            reasons.append(str(e))
        i = j
    raise BackendUnavailable(f"model {model_cfg.name!r}: no usable inference provider ({'; '.join(reasons)})")


__all__ = ["Backend", "build_backend"]
