"""Which nodes hurt when quantized, and the float fallback loop that keeps them in float.

Per-node error is measured against FP32 on calibration inputs: every quantized node's (dequantized)
output is compared with the FP32 model's output for the same tensor, and the node is charged only with
the error it *adds* on top of the error already present at its input. Ranking by added error rather than
accumulated error avoids blaming the last layer for everything upstream.

The loop then keeps the worst node in float, re-quantizes (calibration ranges come from the cache, so a
step costs one quantize + one validation pass), and repeats until the gate passes or the step budget is
spent; each step's accuracy gain and latency cost is recorded for the report. Only the ranking and the gate
decide: both are computed from the calibration ranges and the inputs, so the same inputs keep the same nodes
in float. Latency is measured for the record and read by nothing here, because a timing on a shared host
differs between reruns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .report import drop_text, speed_phrase

DQ_SUFFIX = "_DequantizeLinear_Output"
Q_INPUT_SUFFIX = "_QuantizeLinear_Input"
SKIP_OPS = {"QuantizeLinear", "DequantizeLinear", "Constant", "Shape", "Identity"}
FUSED_ACTIVATIONS = {"Relu", "Clip"}


@dataclass(frozen=True)
class NodeError:
    node: str  # node name, or "producer+activation" for a fused pair (both are kept in float)
    op_type: str
    added_error: float  # relative squared error added by this node (output minus worst input)
    output_error: float  # relative squared error of its output vs FP32


def _rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    return float(np.sum((ref - got) ** 2) / max(np.sum(ref ** 2), 1e-12))


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> bytes:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m.SerializeToString()


def node_errors(fp32_path: Path, int8_path: Path, tensors: list[np.ndarray], input_name: str,
                max_inputs: int = 8) -> list[NodeError]:
    """Rank quantized nodes by the error they add, worst first."""
    fm, qm = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    q_produced = {o for n in qm.graph.node for o in n.output}
    init = {i.name for i in fm.graph.initializer}

    graph_outputs = {o.name for o in qm.graph.output}

    def q_name(t: str) -> str | None:
        if t + DQ_SUFFIX in q_produced:
            return t + DQ_SUFFIX
        return t if t in q_produced or t == input_name else None

    def quantized(t: str) -> bool:  # graph outputs keep their name on the DQ; the producer writes T_QuantizeLinear_Input
        return t + DQ_SUFFIX in q_produced or (t in graph_outputs and t + Q_INPUT_SUFFIX in q_produced)

    nodes = [n for n in fm.graph.node if n.op_type not in SKIP_OPS and n.output and quantized(n.output[0])]
    if not nodes:
        return []
    producer = {o: n for n in fm.graph.node for o in n.output}

    def error_inputs(n: onnx.NodeProto) -> list[str]:
        # A tensor the quantized graph no longer has (a Conv output fused with its Relu: the Conv writes the Relu's
        # output there) carries no error of its own; the error entering the pair is at the producer's inputs.
        out = []
        for t in n.input:
            if not t or t in init:
                continue
            p = producer.get(t)
            if q_name(t) is None and t != input_name and p is not None and p.op_type not in SKIP_OPS:
                out += [i for i in p.input if i and i not in init]
            else:
                out.append(t)
        return out

    f_tensors = sorted({t for n in nodes for t in [n.output[0], *error_inputs(n)] if t and t not in init and t != input_name})
    q_tensors = sorted({q for t in f_tensors if (q := q_name(t)) and q != input_name})
    fs = make_session_bytes(_with_outputs(fm, f_tensors))
    qs = make_session_bytes(_with_outputs(qm, q_tensors))
    f_names = [o.name for o in fs.get_outputs()]
    q_names = [o.name for o in qs.get_outputs()]
    sums: dict[str, list[float]] = {}
    for x in tensors[:max_inputs]:
        fv = dict(zip(f_names, fs.run(None, {input_name: x}), strict=True))
        qv = dict(zip(q_names, qs.run(None, {input_name: x}), strict=True))
        fv[input_name] = qv[input_name] = x
        for n in nodes:
            out = n.output[0]
            e_out = _rel_err(fv[out], qv[q_name(out)])
            e_in = 0.0
            for t in error_inputs(n):
                if (qt := q_name(t)) and t in fv and qt in qv:
                    e_in = max(e_in, _rel_err(fv[t], qv[qt]))
            sums.setdefault(n.name, [0.0, 0.0])
            sums[n.name][0] += e_out - e_in
            sums[n.name][1] += e_out
    k = min(len(tensors), max_inputs)
    # An activation fused into its producer (Conv+Relu runs as one QLinearConv) is one unit: charge the
    # activation's error to the producer and keep both in float together.
    consumers: dict[str, int] = {}
    for n in fm.graph.node:
        for t in n.input:
            consumers[t] = consumers.get(t, 0) + 1
    units: dict[str, list] = {}
    for n in nodes:
        p = producer.get(n.input[0]) if n.input else None
        if n.op_type in FUSED_ACTIVATIONS and p is not None and p.op_type not in SKIP_OPS \
                and consumers.get(n.input[0], 0) == 1:
            units.setdefault(p.name, [p.name, p.op_type, 0.0, 0.0])
            units[p.name][0] = f"{p.name}+{n.name}"
            units[p.name][2] += sums[n.name][0]
            units[p.name][3] = max(units[p.name][3], sums[n.name][1])
        else:
            u = units.setdefault(n.name, [n.name, n.op_type, 0.0, 0.0])
            u[2] += sums[n.name][0]
            u[3] = max(u[3], sums[n.name][1])
    res = [NodeError(name, op, add / k, out / k) for name, op, add, out in units.values()]
    return sorted(res, key=lambda r: -r.added_error)


def make_session_bytes(model_bytes: bytes):
    from edge.inference.backends.onnxruntime import cpu_session

    return cpu_session(model_bytes, 2, optimize=False)  # exact QDQ emulation, no fusion


@dataclass
class FallbackStep:
    step: int
    node: str | None  # the node kept in float at this step (None: the initial INT8 model)
    drop: float
    passed: bool
    latency_ms: float
    speedup: float
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"step": self.step, "node_kept_float": self.node, "drop": round(self.drop, 5), "passed": self.passed,
                "int8_latency_ms": round(self.latency_ms, 3),
                "speedup_vs_fp32": round(self.speedup, 3), "metrics": self.metrics}


def quick_latency(fp32: Path, int8: Path, x: np.ndarray, runs: int = 10, exact_int8: bool = True) -> tuple[float, float]:
    """INT8 latency and its speed-up over FP32, measured side by side (a step's speed cost, for the report only)."""
    from .report import latency_side_by_side

    lat = latency_side_by_side({"fp32": fp32, "int8": int8}, x, runs=runs, warmup=2, exact_int8=exact_int8)
    return lat["int8"]["median_ms"], lat["fp32"]["median_ms"] / lat["int8"]["median_ms"]


def fallback_loop(candidates: list[str], try_exclude: Callable[[list[str]], tuple[float, bool, float, float, dict]],
                  max_steps: int, log: Callable[[str], None]) -> tuple[list[FallbackStep], list[str]]:
    """Keep candidates in float one at a time until `try_exclude` reports a pass; returns steps and nodes.

    The pass flag alone ends the loop: the latency `try_exclude` reports is recorded, never compared, so a
    noisy timing cannot change which nodes a bundle keeps in float.
    """
    steps: list[FallbackStep] = []
    kept: list[str] = []
    for i, node in enumerate(candidates[:max_steps], start=1):
        kept += node.split("+")
        drop, ok, lat, speedup, met = try_exclude(list(kept))
        steps.append(FallbackStep(i, node, drop, ok, lat, speedup, met))
        log(f"fallback step {i}: keep {node} in float -> {drop_text(drop)}, int8 {lat:.2f} ms, {speed_phrase(speedup)} "
            f"({'pass' if ok else 'fail'})")
        if ok:
            break
    return steps, kept
