"""export.sensitivity.node_errors charges a fused Conv+Relu pair with the error it adds, not everything upstream."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import quantize as Q
from export.sensitivity import node_errors


def _chain(depth: int = 3, ch: int = 8, size: int = 16) -> onnx.ModelProto:
    """input -> [Conv 3x3 -> Relu] x depth -> Conv 1x1 head (every Relu fuses into its Conv in QDQ)."""
    rng = np.random.default_rng(0)
    nodes, inits, x, cin = [], [], "input", 1
    for i in range(1, depth + 1):
        w = (rng.standard_normal((ch, cin, 3, 3)) * np.sqrt(2.0 / (cin * 9))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.full(ch, 0.05, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", ch
    inits.append(numpy_helper.from_array(rng.standard_normal((1, ch, 1, 1)).astype(np.float32), "wh"))
    nodes.append(helper.make_node("Conv", [x, "wh"], ["out"], name="head", kernel_shape=[1, 1]))
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, size, size])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, size, size])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_fused_conv_relu_pairs_are_charged_with_added_not_accumulated_error(tmp_path: Path):
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(_chain(), fp32)
    rng = np.random.default_rng(1)
    tensors = [rng.uniform(-2, 2, (1, 1, 16, 16)).astype(np.float32) for _ in range(6)]
    Q.quantize(fp32, int8, Q.recipe_for("cpu"), tensors, "input", tmp_path / "cache.json")
    q = onnx.load(str(int8))
    assert not any(n.op_type == "Relu" for n in q.graph.node)  # the pairs really are fused in the QDQ graph
    errs = {e.node: e for e in node_errors(fp32, int8, tensors, "input")}
    assert {"conv1+relu1", "conv2+relu2", "conv3+relu3"} <= set(errs)
    for i in (2, 3):  # the error entering pair i is the output error of pair i-1; only the rest is pair i's own
        prev, cur = errs[f"conv{i - 1}+relu{i - 1}"], errs[f"conv{i}+relu{i}"]
        assert prev.output_error > 0
        assert cur.added_error == pytest.approx(cur.output_error - prev.output_error, rel=1e-6, abs=1e-12)
        assert cur.added_error < cur.output_error
