"""OpenVINO backend: a hash-verified QDQ ONNX file of the bundle, compiled by OpenVINO.

Why: on x86 mini-PCs OpenVINO's CPU plugin runs QDQ models markedly faster than ONNX Runtime
(benchmarks/results/peers.md). It runs the bundle's common INT8 file, or the variant's own OpenVINO file
when export found one (all-int8: ONNX Runtime's narrow-conv float rule does not apply here) that passed
the gate on OpenVINO (``variants.int8.runtime_files``). Either way it is the file the gate measured on
OpenVINO, and only bundles whose manifest lists OpenVINO in ``runtimes`` run here at all: the CPU plugin
for ``openvino``, the GPU plugin only for ``openvino-gpu`` (export gates the CPU plugin only, so no bundle
offers the GPU yet).

Settings match export's gate (`compile_cpu`): the latency hint, no thread pinning (the pipeline's own
threads share the cores) and fp32 inference precision (on CPUs with bf16 or AMX OpenVINO would otherwise
lower fp32 layers to bf16 on its own, and the gate would no longer describe what runs); the thread count
is the profile's (the gate uses 2; the count changes speed, not the arithmetic). Compiled blobs are cached
in the bundle's device cache, ``engines/openvino-<version>-<device>/``, so a new OpenVINO or another
device never reuses a stale blob. Two infer requests per backend, each used by one caller at a time:
sources that share a model share its backend, and a shared request would hand one frame's outputs to
another; the second lets the pipeline keep the next frame queued in the plugin (`OpenVinoRunner.start`).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ModelConfig
from edge.errors import BackendUnavailable, cause_line
from edge.inference.bundle import Bundle

DEVICES = {"openvino": "CPU", "openvino-gpu": "GPU"}  # profile provider name -> OpenVINO device
RUNTIME = "openvino"


def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable("OpenVINO is not installed (pip install 'medge[openvino]', x86 only)") from None
    return ov


def device_config(device: str, threads: int, cache_dir: Path | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    if device == "CPU":
        cfg.update(INFERENCE_NUM_THREADS=int(threads), ENABLE_CPU_PINNING=False)
    if cache_dir is not None:
        cfg["CACHE_DIR"] = str(cache_dir)
    return cfg


def compile_cpu(model: Path | str, threads: int = 2, cache_dir: Path | None = None) -> Any:
    """A CPU `CompiledModel` with the device's settings: the one way export, benchmarks and the device
    compile a model with OpenVINO, so what the gate measures is what runs."""
    ov = _openvino()
    return ov.Core().compile_model(str(model), "CPU", device_config("CPU", threads, cache_dir))


def cache_dir(bundle: Bundle, device: str) -> Path:
    ov = _openvino()
    return bundle.engines_dir / f"openvino-{ov.__version__.split('-')[0]}-{device}"


class OpenVinoRunner:
    """Runs one compiled model: outputs by the ONNX output names the manifest uses.

    Two infer requests, so the pipeline can submit the next frame before it collects this one (`start`):
    the CPU plugin then begins that inference the moment this one ends, instead of waiting for the infer
    thread to get the interpreter lock back from the other stages. Each request is used by one caller at a
    time (a free-list), so sources that share the backend never read each other's outputs."""

    REQUESTS = 2

    def __init__(self, compiled: Any, names: tuple[str, ...] = ()) -> None:
        """``names``: the ONNX output names the caller reads (manifest outputs, explanation): OpenVINO keeps
        every name a tensor had, and `get_any_name` may return another one."""
        self.compiled = compiled
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.REQUESTS):
            self._free.put(compiled.create_infer_request())
        self.input_name: str = compiled.inputs[0].get_any_name()
        self.input_shape = tuple(compiled.inputs[0].get_partial_shape().to_shape())
        self.output_names: list[str] = [next((n for n in names if n in o.get_names()), o.get_any_name())
                                        for o in compiled.outputs]

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        return self.start(tensor)()

    def start(self, tensor: np.ndarray, block: bool = True) -> Callable[[], dict[str, np.ndarray]] | None:
        """Begin one inference (the input is copied) and return what waits for its outputs; call it exactly
        once. ``block=False``: None when every request is in use (by another source sharing this backend),
        so a caller holding one in flight can collect it first instead of waiting on itself."""
        try:
            request = self._free.get(block=block)
        except queue.Empty:
            return None
        try:
            request.start_async({0: tensor})
        except BaseException:
            self._free.put(request)
            raise

        def outputs() -> dict[str, np.ndarray]:
            try:
                request.wait()
                # the request reuses its output buffers on the next call: copy before handing them on
                return {n: np.array(request.get_output_tensor(i).data, copy=True)
                        for i, n in enumerate(self.output_names)}
            finally:
                self._free.put(request)

        return outputs


class OpenVinoBackend(OpenVinoRunner):
    name = RUNTIME

    def __init__(self, compiled: Any, provider: str, model_path: Path, names: tuple[str, ...] = ()) -> None:
        super().__init__(compiled, names)
        self.provider = provider
        self.model_path = model_path
        self.warmup_ms: list[float] = []

    @classmethod
    def from_bundle(cls, bundle: Bundle, model_cfg: ModelConfig, providers: list[str],
                    log: logging.Logger, allow_spinning: bool = False) -> OpenVinoBackend:
        ov = _openvino()
        offered = bundle.manifest.runtimes
        path = bundle.model_path(model_cfg.variant, RUNTIME)
        core = ov.Core()
        skipped = []
        for p in providers:
            device = DEVICES[p]
            gated = RUNTIME if device == "CPU" else p  # the GPU plugin rounds differently: it needs its own gate
            if gated not in offered:
                skipped.append(f"{p}: bundle {bundle.manifest.name} {bundle.manifest.version} was not accuracy-gated on "
                               f"{gated} (gated on: {', '.join(offered)}); re-export it with medge[openvino] "
                               "installed, or list cpu")
                log.warning("model %s: provider %s", model_cfg.name, skipped[-1])
                continue
            if not any(d.split(".")[0] == device for d in core.available_devices):
                skipped.append(f"{p}: no OpenVINO {device} device on this machine")
                log.warning("model %s: provider %s", model_cfg.name, skipped[-1])
                continue
            cache: Path | None = cache_dir(bundle, device)
            try:
                cache.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a read-only bundle folder: run without the cache, slower starts only
                log.warning("model %s: OpenVINO cache %s not writable (%s); compiling at every start",
                            model_cfg.name, cache, e.strerror)
                cache = None
            try:
                compiled = core.compile_model(str(path), device,
                                              device_config(device, int(model_cfg.intra_op_threads), cache))
                m = bundle.manifest
                backend = cls(compiled, p, path, (*(o.name for o in m.outputs), str(m.explanation.get("output", ""))))
                backend.warmup(model_cfg.warmup_runs)
            except Exception as e:  # OpenVINO raises RuntimeError subclasses with multi-line text
                # unavailable, not fatal: the profile's next provider (cpu) still serves the patient
                skipped.append(f"{p}: OpenVINO cannot compile or run {path.name} on {device} ({cause_line(e)})")
                log.warning("model %s: provider %s", model_cfg.name, skipped[-1])
                continue
            log.info("model %s: %s on openvino/%s (OpenVINO %s, %d threads, warm-up %s ms)", model_cfg.name, path.name,
                     device, ov.__version__.split("-")[0], model_cfg.intra_op_threads,
                     "/".join(f"{t:.1f}" for t in backend.warmup_ms) or "-")
            return backend
        raise BackendUnavailable("openvino: " + "; ".join(skipped))

    def warmup(self, runs: int) -> None:
        """First inferences allocate and (with a cold cache) finish compiling: not on a patient's frame."""
        x = np.zeros(self.input_shape, np.float32)
        for _ in range(max(0, runs)):
            t0 = time.perf_counter()
            self.run(x)
            self.warmup_ms.append((time.perf_counter() - t0) * 1000)

    def close(self) -> None:
        self._free = queue.SimpleQueue()
        self.compiled = None
