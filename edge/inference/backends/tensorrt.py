"""Native TensorRT engine runner (Jetson and x86 + NVIDIA GPU).

Runs a serialized engine (``engines/*.plan`` in the bundle, built on the device or by `medge export
build-engine` for this exact GPU and TensorRT version) without ONNX Runtime in between. TensorRT and
the CUDA runtime bindings are optional (extra ``medge[tensorrt]``); on a machine without them the runner
raises `BackendUnavailable` with a plain reason and `build_backend` moves on to the next provider.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ModelConfig
from edge.errors import BackendUnavailable
from edge.inference.backends.engine_key import GpuInfo, detect_gpu, engine_name
from edge.inference.bundle import Bundle


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # older cuda-python
        return cudart
    except ImportError:
        raise BackendUnavailable("the CUDA runtime Python bindings are not installed (pip install cuda-python)") from None


def _check(result: Any) -> Any:
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailable(f"CUDA call failed with error {int(err)} (is a CUDA GPU present?)")
    return rest[0] if len(rest) == 1 else rest


def find_engine(bundle: Bundle, variant: str | None, dla_core: int | None, gpu: GpuInfo, trt_version: str) -> Path:
    """The engine built for exactly this GPU, TensorRT version, precision and DLA core, or a plain refusal.

    Loading an engine built elsewhere either fails inside TensorRT or, worse, runs with another build's
    tactics; an exact key match is the only safe reuse.
    """
    precision = bundle.variant(variant).precision
    want = bundle.engines_dir / engine_name(gpu, trt_version, precision, dla_core)
    if want.is_file():
        return want
    others = sorted(p.name for p in bundle.engines_dir.glob("*.plan")) if bundle.engines_dir.is_dir() else []
    seen = f" (it holds {', '.join(others)}, built for another GPU, TensorRT version, precision or DLA core)" \
        if others else ""
    raise BackendUnavailable(f"{bundle.engines_dir}: no TensorRT engine {want.name} for this device{seen}; build it "
                             "here with 'medge export build-engine'")


class TensorRTBackend:
    name = "tensorrt"
    provider = "trt-native"

    def __init__(self, engine_path: Path, log: logging.Logger) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable("TensorRT is not installed on this machine (pip install 'medge[tensorrt]' on "
                                     "a device with an NVIDIA GPU)") from None
        cudart = _import_cudart()
        n = _check(cudart.cudaGetDeviceCount())
        if int(n) < 1:
            raise BackendUnavailable("no CUDA GPU is visible (cudaGetDeviceCount returned 0)")
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self._logger)
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise BackendUnavailable(f"{engine_path}: TensorRT cannot deserialize the engine (built for another GPU "
                                     "or TensorRT version); rebuild it on this device")
        self.engine = engine
        self.context = engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, int] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(max(1, d) for d in engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append(name)
                self.context.set_input_shape(name, shape)
            else:
                self.outputs.append(name)
            self._host[name] = np.empty(shape, dtype)
            self._dev[name] = int(_check(cudart.cudaMalloc(self._host[name].nbytes)))
            self.context.set_tensor_address(name, self._dev[name])
        self.input_name = self.inputs[0]
        self.engine_path = engine_path
        log.info("TensorRT engine %s loaded (inputs %s, outputs %s)", engine_path.name, self.inputs, self.outputs)

    @classmethod
    def from_bundle(cls, bundle: Bundle, model_cfg: ModelConfig, providers: list[str], log: logging.Logger,
                    allow_spinning: bool = False) -> TensorRTBackend:
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable("TensorRT is not installed on this machine (pip install 'medge[tensorrt]' on "
                                     "a device with an NVIDIA GPU)") from None
        path = find_engine(bundle, model_cfg.variant, model_cfg.dla_core, detect_gpu(), trt.__version__)
        backend = cls(path, log)
        for _ in range(model_cfg.warmup_runs):
            backend.run(np.zeros(backend._host[backend.input_name].shape, np.float32))
        return backend

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        src = np.ascontiguousarray(tensor, dtype=self._host[self.input_name].dtype)
        _check(cudart.cudaMemcpyAsync(self._dev[self.input_name], src.ctypes.data, src.nbytes, h2d, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        out = {}
        for name in self.outputs:
            h = np.empty_like(self._host[name])
            _check(cudart.cudaMemcpyAsync(h.ctypes.data, self._dev[name], h.nbytes, d2h, self.stream))
            out[name] = h
        _check(cudart.cudaStreamSynchronize(self.stream))
        return out

    def close(self) -> None:
        for ptr in self._dev.values():
            self._cudart.cudaFree(ptr)
        self._dev.clear()
        self.context = None
        self.engine = None
