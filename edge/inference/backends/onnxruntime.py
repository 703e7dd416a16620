"""ONNX Runtime backend with an ordered execution-provider list.

TensorRT's engine cache lives in the bundle's ``engines/`` folder (an unhashed device cache, see
`edge.inference.bundle`) so the slow first engine build happens once per device and model, not once per start.
Providers ORT does not have on this machine are dropped before the session is built, each with a logged
reason; after the session exists we log which providers ORT actually assigned, because ORT itself falls
back silently when, say, the TensorRT libraries are missing at load time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import ModelConfig
from edge.errors import BackendUnavailable, BundleError
from edge.inference.bundle import Bundle


def _ort_names() -> dict[str, str]:
    from edge.inference.backends import PROVIDERS

    return {p.name: p.ort_name for p in PROVIDERS.values() if p.ort_name}


ORT_NAMES = _ort_names()
SHORT = {v: k for k, v in ORT_NAMES.items()}


def provider_chain(wanted: list[str], available: list[str], engines_dir: Path, model_cfg: ModelConfig,
                   log: logging.Logger, int8: bool = False) -> tuple[list[Any], list[str]]:
    """Map profile provider names to ORT (name, options) pairs, skipping unavailable ones with a reason.
    ``int8``: a QDQ model, whose Q/DQ layers TensorRT only builds with its INT8 flag set (ORT's TensorRT EP
    does not set it from the graph)."""
    chain: list[Any] = []
    skipped: list[str] = []
    for p in wanted:
        ort_name = ORT_NAMES.get(p)
        if ort_name is None:
            skipped.append(f"{p}: not an ONNX Runtime provider")
            continue
        if ort_name not in available:
            from edge.inference.backends import PROVIDERS

            why = PROVIDERS[p].unavailable
            log.warning("model %s: provider %s skipped: %s", model_cfg.name, p, why)
            skipped.append(f"{p}: {why}")
            continue
        if p == "tensorrt":
            engines_dir.mkdir(parents=True, exist_ok=True)
            opts: dict[str, Any] = {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engines_dir),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(engines_dir),
                "trt_fp16_enable": True,
            }
            if int8:
                opts["trt_int8_enable"] = True
            if model_cfg.dla_core is not None:
                opts.update(trt_dla_enable=True, trt_dla_core=int(model_cfg.dla_core))
            chain.append((ort_name, opts))
        else:
            chain.append(ort_name)
    return chain, skipped


def exact_int8_needed(recipe: dict | None) -> bool:
    """Whether ONNX Runtime must run this model's int8 layers in its x64 precision mode.

    On x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) ORT's fast u8s8 kernels add pairs of
    uint8 x int8 products in 16 bits and saturate: measured here, cxr-opacity's AUROC fell from 0.9975 to
    0.74 (benchmarks/results/export_matrix.md). Weights quantized with ``reduce_range`` (7 bits) cannot
    saturate, so those bundles keep the fast kernels; anything else (older bundles, the tensorrt
    recipe run on a CPU) gets precision mode, which ORT applies only on the CPUs that need it.
    """
    return not bool((recipe or {}).get("reduce_range", False))


def session_options(intra_op_threads: int, inter_op_threads: int = 1, allow_spinning: bool = False,
                    exact_int8: bool = True, optimize: bool = True) -> Any:
    """The CPU session settings the device runs with. Export evaluates and times candidate models with
    these same settings, so its accuracy gate and latency table describe what the device will run."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.log_severity_level = 3
    # ORT's worker threads busy-wait after each run by default. On a 2-4 core device the pipeline's own
    # threads (decode, preprocess, post-processing, outbox fsync) need those cycles
    # (benchmarks/results/pipeline.md compares both).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if allow_spinning else "0")
    so.add_session_config_entry("session.x64quantprecision", "1" if exact_int8 else "0")
    return so


def cpu_session(model: Path | str | bytes, threads: int = 2, exact_int8: bool = True, optimize: bool = True) -> Any:
    """A CPU `InferenceSession` with the device's settings: the one way export, benchmarks and the
    reference-model tooling build a session, so what they measure is what the device runs."""
    import onnxruntime as ort

    so = session_options(threads, 1, exact_int8=exact_int8, optimize=optimize)
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), so,
                                providers=["CPUExecutionProvider"])


class OrtBackend:
    name = "onnxruntime"

    def __init__(self, session: Any, provider: str, providers_used: list[str], model_path: Path) -> None:
        self.session = session
        self.provider = provider
        self.providers_used = providers_used
        self.model_path = model_path
        inp = session.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_shape = tuple(inp.shape)
        self.output_names: list[str] = [o.name for o in session.get_outputs()]
        self.warmup_ms: list[float] = []

    @classmethod
    def from_bundle(cls, bundle: Bundle, model_cfg: ModelConfig, providers: list[str],
                    log: logging.Logger, allow_spinning: bool = False) -> OrtBackend:
        import onnxruntime as ort

        path = bundle.model_path(model_cfg.variant)
        chain, skipped = provider_chain(providers, ort.get_available_providers(), bundle.engines_dir, model_cfg, log,
                                        int8=bundle.variant(model_cfg.variant).precision == "int8")
        if not chain:
            raise BackendUnavailable("onnxruntime: none of " + ", ".join(providers) + " is available (" +
                                     "; ".join(skipped) + ")")
        variant = bundle.variant(model_cfg.variant)
        so = session_options(int(model_cfg.intra_op_threads), int(model_cfg.inter_op_threads), allow_spinning,
                             exact_int8=exact_int8_needed(variant.recipe))
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=chain)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BundleError(f"{path}: ONNX Runtime cannot load the model ({first})") from None
        used = list(sess.get_providers())
        wanted_first = chain[0][0] if isinstance(chain[0], tuple) else chain[0]
        if used and used[0] != wanted_first:
            log.warning("model %s: ONNX Runtime could not use %s and fell back to %s", model_cfg.name,
                        SHORT.get(wanted_first, wanted_first), SHORT.get(used[0], used[0]))
        backend = cls(sess, SHORT.get(used[0], used[0]) if used else "cpu", used, path)
        backend.warmup(model_cfg.warmup_runs)
        log.info("model %s: %s on onnxruntime/%s (%s, %d intra-op threads, warm-up %s ms)", model_cfg.name,
                 path.name, backend.provider, ",".join(SHORT.get(u, u) for u in used), model_cfg.intra_op_threads,
                 "/".join(f"{t:.1f}" for t in backend.warmup_ms) or "-")
        return backend

    def warmup(self, runs: int) -> None:
        """Run on zeros first: the first ORT runs allocate arenas and (on TensorRT) build or load engines,
        which must not land on the first real patient frame."""
        if runs <= 0:
            return
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in self.input_shape)
        x = np.zeros(shape, np.float32)
        for _ in range(runs):
            t0 = time.perf_counter()
            self.session.run(self.output_names, {self.input_name: x})
            self.warmup_ms.append((time.perf_counter() - t0) * 1000)

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: tensor})
        return dict(zip(self.output_names, outs, strict=True))

    def close(self) -> None:
        self.session = None
