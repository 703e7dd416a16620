"""Explanation maps for classifiers: an exact class-activation map (CAM) added to the graph as an output.

Why in the graph and not on the device: the map then comes out of the same inference (no second model,
no gradients, nothing the device has to know about the architecture), is quantized with the rest, and is
gated like the rest. Why only these heads: for a head that pools a spatial map and then applies a linear
layer, the linear layer applied at every position (a 1x1 convolution with the head's own weights) gives a
map whose spatial mean *is* the logit (Zhou et al. 2016, "Learning Deep Features for Discriminative
Localization"): exact, not an approximation. Two forms are recognised, through any Flatten/Reshape/Squeeze:

* ``features -> GlobalAveragePool | ReduceMean(H, W) -> Gemm | MatMul(+Add)``: CAM = a new 1x1 Conv with
  the head's weights and bias on ``features`` (mean over the map = the logit);
* ``map (K channels) -> GlobalAveragePool | GlobalMaxPool | ReduceMean | ReduceMax(H, W)`` with K the
  number of logits: the map before the pool is the CAM (its mean or max = the logit), as in the reference
  cxr-opacity model (1x1 evidence conv, global max).

Anything else (max pool before a linear layer, attention heads, ...) gets ``kind: none`` with the reason, and
the manifest says so: the device draws no heatmap rather than a misleading one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

CAM_OUTPUT = "cam"
MIN_CORRELATION = 0.9  # INT8's map must follow FP32's this closely (mean Pearson r) to ship
RESHAPES = ("Flatten", "Reshape", "Squeeze", "Identity")
POOLS = {"GlobalAveragePool": "mean", "GlobalMaxPool": "max", "ReduceMean": "mean", "ReduceMax": "max"}


@dataclass
class Explanation:
    """What the manifest says about the bundle's explanation map."""

    kind: str  # cam | none | mask (segmentation) | boxes (detection): the last two are their own explanation
    reason: str = ""
    output: str | None = None
    method: str | None = None  # linear-head (added 1x1 conv) | pooled-map (the map before the pool)
    shape: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # gate, latency cost

    def to_dict(self) -> dict[str, Any]:
        if self.kind != "cam":
            return {"kind": self.kind, "reason": self.reason}
        return {"kind": self.kind, "output": self.output, "method": self.method, "shape": self.shape,
                "exact": True, **self.extra}


def _spatial_axes(node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> bool:
    if node.op_type.startswith("Global"):
        return True
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1 and node.input[1] in inits:
        axes = [int(v) for v in inits[node.input[1]].reshape(-1)]
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def _linear(node: onnx.NodeProto, inits: dict[str, np.ndarray], producer: dict) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(input tensor, W (K, C), b (K)) of a constant linear layer, or None."""
    if node.op_type == "Gemm":
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        if a.get("transA", 0) or node.input[1] not in inits:
            return None
        w = inits[node.input[1]]
        w = (w if a.get("transB", 0) else w.T) * float(a.get("alpha", 1.0))
        b = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        b = np.zeros(w.shape[0], np.float32) if b is None else np.broadcast_to(b.reshape(-1) * float(a.get("beta", 1.0)),
                                                                              (w.shape[0],))
        return node.input[0], w.astype(np.float32), np.asarray(b, np.float32)
    if node.op_type == "Add":
        const = next((i for i in node.input if i in inits), None)
        other = next((i for i in node.input if i not in inits), None)
        mm = producer.get(other)
        if const is None or mm is None or mm.op_type != "MatMul" or mm.input[1] not in inits:
            return None
        w = inits[mm.input[1]].T
        return mm.input[0], w.astype(np.float32), np.broadcast_to(inits[const].reshape(-1), (w.shape[0],)).astype(np.float32)
    if node.op_type == "MatMul" and node.input[1] in inits:
        w = inits[node.input[1]].T
        return node.input[0], w.astype(np.float32), np.zeros(w.shape[0], np.float32)
    return None


def add_cam(path: Path, logits: str, n_outputs: int) -> Explanation:
    """Add the CAM output to the ONNX file at ``path`` (in place) when its head allows an exact one."""
    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}

    def back(t: str) -> tuple[str, onnx.NodeProto | None]:
        n = producer.get(t)
        while n is not None and n.op_type in RESHAPES:
            t = n.input[0]
            n = producer.get(t)
        return t, n

    t, node = back(logits)
    lin = None
    if node is not None and node.op_type in ("Gemm", "MatMul", "Add"):
        lin = _linear(node, inits, producer)
        if lin is None:
            return Explanation("none", f"the head's {node.op_type} ({node.name}) has no constant weights")
        t, node = back(lin[0])
    if node is None or node.op_type not in POOLS or not _spatial_axes(node, inits):
        what = f"{node.op_type} ({node.name})" if node is not None else "the graph input"
        return Explanation("none", f"the logits do not come from a global pool over a feature map (found {what}); "
                           "an exact class-activation map needs global pooling then a linear head")
    pool, feat = POOLS[node.op_type], node.input[0]
    if lin is not None:
        if pool != "mean":
            return Explanation("none", f"{node.op_type} before a linear head: the map of a max-pooled linear "
                               "head is not exact")
        w, b = lin[1], lin[2]
        if w.shape[0] != n_outputs:
            return Explanation("none", f"the linear head has {w.shape[0]} outputs, the logits {n_outputs}")
        g.initializer.extend([numpy_helper.from_array(w.reshape(*w.shape, 1, 1), "medge_cam_weight"),
                              numpy_helper.from_array(b, "medge_cam_bias")])
        g.node.append(helper.make_node("Conv", [feat, "medge_cam_weight", "medge_cam_bias"], [CAM_OUTPUT],
                                       name="medge_cam", kernel_shape=[1, 1]))
        method, out = "linear-head", CAM_OUTPUT
    else:  # the map itself becomes an output, under its own name: an Identity would give it two names
        method, out = "pooled-map", feat
    model = onnx.shape_inference.infer_shapes(model)
    vi = next((v for v in model.graph.value_info if v.name == out), None)
    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim] if vi is not None else []
    if len(shape) != 4 or shape[1] != n_outputs or min(shape[2:]) < 2:
        return Explanation("none", f"the pooled map has shape {shape}, not (1, {n_outputs}, H>1, W>1)")
    model.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, shape))
    onnx.save(model, str(path))
    return Explanation("cam", output=out, method=method, shape=shape,
                       extra={"pool": pool})


def agreement(fp32: list[np.ndarray], int8: list[np.ndarray]) -> dict[str, float]:
    """How closely INT8's maps follow FP32's: mean Pearson r, and how often the hottest cell is the same or
    a neighbour (what a reader's eye goes to)."""
    rs, peaks = [], []
    for a, b in zip(fp32, int8, strict=True):
        a, b = np.asarray(a, np.float64).reshape(a.shape[1], -1), np.asarray(b, np.float64).reshape(b.shape[1], -1)
        for ca, cb in zip(a, b, strict=True):
            if ca.std() < 1e-9 or cb.std() < 1e-9:
                rs.append(1.0 if np.allclose(ca, cb, atol=1e-3) else 0.0)
            else:
                rs.append(float(np.corrcoef(ca, cb)[0, 1]))
        hw = fp32[0].shape[2:]
        pa, pb = np.unravel_index(a.argmax(axis=1), hw), np.unravel_index(b.argmax(axis=1), hw)
        peaks += list((np.abs(pa[0] - pb[0]) <= 1) & (np.abs(pa[1] - pb[1]) <= 1))
    return {"correlation": round(float(np.mean(rs)), 4), "peak_agreement": round(float(np.mean(peaks)), 4),
            "samples": len(fp32), "min_correlation": MIN_CORRELATION}
