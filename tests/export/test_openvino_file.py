"""OpenVINO's own INT8 file: the rewrites that make its QDQ graph the one NNCF builds (benchmarks/bench_peers.py
measures the speed; this checks the graph and that the arithmetic still approximates FP32)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from export import quantize as Q


def _unet_with_heads() -> onnx.ModelProto:
    """conv-relu, a pooled branch upsampled by Resize and concatenated with the skip, a head conv whose map is
    an output, read by ReduceMax (a score) and by Reshape -> Transpose (per-pixel scores): the tails of the
    reference models in one graph."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.4).astype(np.float32))  # noqa: E731
    inits = [w(8, 1, 3, 3), w(8), w(8, 8, 3, 3), w(8), w(2, 16, 1, 1), w(2),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([1, 2, 256], np.int64), "shape")]
    for i, name in enumerate(("c1w", "c1b", "c2w", "c2b", "hw", "hb")):
        inits[i].name = name
    nodes = [
        helper.make_node("Conv", ["input", "c1w", "c1b"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
        helper.make_node("MaxPool", ["r1"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "c2w", "c2b"], ["c2"], name="c2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
        helper.make_node("Resize", ["r2", "", "scales"], ["up"], name="up", mode="linear"),
        helper.make_node("Concat", ["up", "r1"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "hw", "hb"], ["map"], name="head"),
        helper.make_node("ReduceMax", ["map"], ["peak"], name="peak", keepdims=0),
        helper.make_node("Reshape", ["map", "shape"], ["flat"], name="flat"),
        helper.make_node("Transpose", ["flat"], ["scores"], name="scores", perm=[0, 2, 1]),
    ]
    g = helper.make_graph(nodes, "unet", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 1, 16, 16])],
                          [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("peak", "map", "scores")],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _inits(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


def _qdq_file(tmp_path) -> tuple:
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(_unet_with_heads(), fp32)
    rng = np.random.default_rng(1)
    tensors = [(rng.random((1, 1, 16, 16), dtype=np.float32) * 4 - 1) for _ in range(16)]  # normalised: -1..3
    recipe = replace(Q.recipe_for("cpu"), reduce_range=False)  # OpenVINO's file: 8-bit (export/make_bundle.py)
    out = tmp_path / "int8.onnx"
    Q.quantize(fp32, out, recipe, tensors, "input", tmp_path / "cache.json")
    return fp32, onnx.load(str(out)), tensors


def test_an_input_that_crosses_zero_becomes_symmetric_int8_and_relu_outputs_stay_uint8(tmp_path):
    _, m, _ = _qdq_file(tmp_path)
    m, rewritten = Q.symmetric_signed_activations(m)
    assert "input" in rewritten and not {"r1", "r2"} & set(rewritten)  # (the head's map crosses zero too)
    inits = _inits(m)
    zps = {n.input[0]: inits[n.input[2]] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert zps["input"].dtype == np.int8 and int(zps["input"]) == 0
    relu_outputs = [t for t in zps if t in ("r1", "r2")]
    assert relu_outputs and all(zps[t].dtype == np.uint8 and int(zps[t]) == 0 for t in relu_outputs)


def test_a_concats_inputs_get_the_concats_own_scale(tmp_path):
    _, m, _ = _qdq_file(tmp_path)
    inits = _inits(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    cat = next(n for n in m.graph.node if n.op_type == "Concat")
    scales = lambda mm: [float(_inits(mm)[producer[t].input[1]]) for t in cat.input]  # noqa: E731
    assert len(set(scales(m))) == 2  # ONNX Runtime calibrated the two inputs on their own
    out_q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == cat.output[0])
    m, changed = Q.unify_concat_scales(m)
    assert changed == [cat.name]
    assert scales(m) == [float(inits[out_q.input[1]])] * 2


def test_the_tail_round_trips_go_but_the_head_conv_keeps_int8_inputs(tmp_path):
    fp32, m, tensors = _qdq_file(tmp_path)
    names = [o.name for o in m.graph.output]
    m, removed = Q.drop_float_tail_qdq(m)
    assert removed >= 2  # after the head conv, and again after the Reshape (removed from the outputs backwards)
    onnx.checker.check_model(m)
    producer = {o: n for n in m.graph.node for o in n.output}
    head = next(n for n in m.graph.node if n.name == "head")
    assert [producer[t].op_type for t in head.input[:2]] == ["DequantizeLinear", "DequantizeLinear"]
    quantized = {n.input[0] for n in m.graph.node if n.op_type == "QuantizeLinear"}
    assert not quantized & {"map", "flat", "scores", "peak", head.output[0]}
    assert [o.name for o in m.graph.output] == names
    # every rewrite together still computes what FP32 does, within 8-bit error
    m, _ = Q.symmetric_signed_activations(m)
    m, _ = Q.unify_concat_scales(m)
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    for x in tensors[:4]:
        a, b = want.run(None, {"input": x}), got.run(None, {"input": x})
        for name, u, v in zip(names, a, b, strict=True):
            assert np.abs(u - v).max() < 0.05 * np.abs(u).max() + 0.05, name
