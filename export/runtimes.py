"""The CPU runtimes a `--target cpu` bundle is gated and timed on: ONNX Runtime always, OpenVINO when installed.

The device may run a cpu bundle on either (profile providers ``cpu`` / ``openvino``), and the two run the
same QDQ file with different kernels: different rounding, different speed. So export evaluates the chosen
INT8 model on every runtime installed here with the device's own settings for that runtime
(`edge.inference.backends.onnxruntime.cpu_session`, `edge.inference.backends.openvino.compile_cpu`), and
the manifest's ``runtimes`` lists those whose outputs stayed inside the accuracy budget: the device refuses
the others.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


def _ort(path: Path, threads: int, exact_int8: bool) -> Runner:
    from edge.inference.backends.onnxruntime import cpu_session

    sess = cpu_session(path, threads, exact_int8=exact_int8)
    name, outs = sess.get_inputs()[0].name, [o.name for o in sess.get_outputs()]
    return lambda x: dict(zip(outs, sess.run(None, {name: x}), strict=True))


def _openvino(path: Path, threads: int, exact_int8: bool) -> Runner:
    import onnx

    from edge.inference.backends.openvino import OpenVinoRunner, compile_cpu

    names = (tuple(o.name for o in onnx.load(str(path), load_external_data=False).graph.output)
             if path.suffix == ".onnx" else ())  # an OpenVINO IR (a peer's model in bench_peers) keeps its own names
    return OpenVinoRunner(compile_cpu(path, threads), names).run


# name (an edge.inference.backends LOADERS key) -> (module that must be importable, runner factory)
CPU_RUNTIMES: dict[str, tuple[str, Callable[[Path, int, bool], Runner]]] = {
    "onnxruntime": ("onnxruntime", _ort),
    "openvino": ("openvino", _openvino),
}


def installed() -> list[str]:
    """CPU runtimes present here, ONNX Runtime first (the reference every gate starts from)."""
    return [n for n, (mod, _) in CPU_RUNTIMES.items() if importlib.util.find_spec(mod) is not None]


def runner(runtime: str, path: Path | str, threads: int = 2, exact_int8: bool = True) -> Runner:
    """``exact_int8`` applies to ONNX Runtime only (its x64 precision mode on CPUs without VNNI)."""
    return CPU_RUNTIMES[runtime][1](Path(path), threads, exact_int8)
