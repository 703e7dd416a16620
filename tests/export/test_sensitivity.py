"""export.sensitivity.node_errors charges a fused Conv+Relu pair with the error it adds, not everything upstream."""

from __future__ import annotations

import json
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


def _stem_pool_head(size: int = 16) -> onnx.ModelProto:
    """input -> stem Conv 1->8 + Relu -> MaxPool -> Conv 8->8 + Relu -> head Conv 8->1: two narrow convs, one
    feeding an op ORT quantizes only when its input is quantized, one writing the graph output."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32), "ws"),
             numpy_helper.from_array(np.full(8, 0.1, np.float32), "bs"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array(np.full(8, 0.1, np.float32), "b2"),
             numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32), "wh")]
    nodes = [helper.make_node("Conv", ["input", "ws", "bs"], ["s"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["s"], ["sr"], name="stem_relu"),
             helper.make_node("MaxPool", ["sr"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "wh"], ["out"], name="head", kernel_shape=[1, 1])]
    g = helper.make_graph(nodes, "stem_pool_head",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, size, size])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, size // 2, size // 2])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_narrow_conv_rule_reads_the_graph_not_a_timing(tmp_path: Path, monkeypatch):
    from export import speed

    fp32 = tmp_path / "fp32.onnx"
    onnx.save(_stem_pool_head(), fp32)
    rng = np.random.default_rng(2)
    tensors = [rng.uniform(-2, 2, (1, 1, 16, 16)).astype(np.float32) for _ in range(6)]
    recipe = Q.recipe_for("cpu")
    plain = tmp_path / "plain.onnx"
    Q.quantize(fp32, plain, recipe, tensors, "input", tmp_path / "cache.json")
    assert {"stem", "pool", "conv2", "head"} <= speed.int8_nodes(onnx.load(str(plain)))

    timings = iter([{"plain": {"median_ms": 1.0}, "narrow_float": {"median_ms": 9.0}},
                    {"plain": {"median_ms": 9.0}, "narrow_float": {"median_ms": 1.0}}])
    monkeypatch.setattr(speed, "latency_side_by_side", lambda *a, **k: next(timings))  # float slower, then faster
    results = [speed.choose_narrow_exclusions(fp32, recipe, tensors, "input", tmp_path / "cache.json", tmp_path)
               for _ in range(2)]
    (r1, rec1), (r2, rec2) = results
    assert rec1["narrow_convs"] == ["stem", "head"]
    # the stem stays int8: kept float, it would leave the MaxPool in float on the widest tensor
    assert rec1["decisions"]["stem"] == "int8: keeping it float would leave pool in float"
    assert rec1["decisions"]["head"].startswith("float: ")
    assert r1.nodes_to_exclude == ("head",) and rec1["float_convs"] == ["head"] and rec1["kept_float"]
    assert "not timed" in rec1["rule"] and rec1["int8_ms_all_quantized"] == 1.0 and rec2["int8_ms_all_quantized"] == 9.0
    # opposite timings, the same decision
    assert r2 == r1 and {k: v for k, v in rec2.items() if not k.startswith("int8_ms")} == \
        {k: v for k, v in rec1.items() if not k.startswith("int8_ms")}


def test_fallback_loop_stops_on_the_gate_alone():
    from export.sensitivity import fallback_loop

    def runs(latencies: list[float]) -> list[str]:
        lat = iter(latencies)

        def attempt(nodes: list[str]) -> tuple[float, bool, float, float, dict]:
            return 0.0, len(nodes) >= 3, next(lat), 1.0, {}

        return fallback_loop(["a", "b+b_relu", "c"], attempt, 8, lambda _m: None)[1]

    assert runs([1.0, 50.0, 2.0]) == runs([50.0, 1.0, 0.1]) == ["a", "b", "b_relu"]


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> dict[str, Path]:
    """A classifier with a narrow stem feeding a conv, and an outlier branch that one white calibration frame
    stretches until plain INT8 fails the gate: both the speed rule and the accuracy fallback decide."""
    from tests.support.export_inputs import model_spec, save_model, write_images

    root = tmp_path_factory.mktemp("repro")
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b2"),
             numpy_helper.from_array(rng.standard_normal((8, 1)).astype(np.float32), "gw"),
             numpy_helper.from_array(np.zeros(1, np.float32), "gb"),
             numpy_helper.from_array(np.array([0.5], np.float32), "t"),
             numpy_helper.from_array(np.array([1000.0], np.float32), "k"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "shape11")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="stem_relu"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["s"], name="fc"),
             helper.make_node("GlobalAveragePool", ["input"], ["m4"], name="mean"),
             helper.make_node("Reshape", ["m4", "shape11"], ["m"], name="reshape"),
             helper.make_node("Sub", ["m", "t"], ["d"], name="sub"),
             helper.make_node("Mul", ["d", "k"], ["e"], name="mul"),
             helper.make_node("Relu", ["e"], ["o"], name="relu_outlier"),
             helper.make_node("Add", ["s", "o"], ["logits"], name="add_logit")]
    g = helper.make_graph(nodes, "repro", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    calib = root / "calib"
    write_images(calib, 24, seed=5, white=True)
    # decision threshold at FP32's median logit, so the agreement gate has positives and negatives to rank
    import onnxruntime as ort

    from edge.inference.preprocess import Preprocessor, PreprocessSpec
    from export.datasets import load_samples
    from tests.support.export_inputs import PRE

    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = [float(sess.run(None, {"input": s.tensor})[0].reshape(-1)[0])
              for s in load_samples(calib, Preprocessor(PreprocessSpec.from_dict(PRE)), "calibration")]
    threshold = float(1 / (1 + np.exp(-np.median(logits))))
    spec = model_spec("classify", "repro-cls", "logits", threshold=threshold, review_band=[threshold, threshold])
    return {"root": root, "calib": calib, "model": save_model(root / "m", m, spec)}


def test_same_inputs_export_the_same_int8_model_and_float_nodes(repro):
    from export.make_bundle import ExportOptions, run_export
    from tests.support.export_inputs import quiet

    outs, results = [], []
    for i in range(2):
        out = repro["root"] / f"bundle{i}"
        results.append(run_export(ExportOptions(model=repro["model"], calib=repro["calib"], val=None, out=out,
                                                target="cpu", latency_runs=3, max_drop=0.01), log=quiet))
        outs.append(out)
    a, b = ((o / "model.int8.onnx").read_bytes() for o in outs)
    assert a == b
    assert results[0].float_nodes == results[1].float_nodes
    assert "stem" in results[0].float_nodes  # the speed rule: the stem feeds a conv, nothing else leaves int8
    reps = [json.loads((o / "report.json").read_text()) for o in outs]
    assert reps[0]["recipe"]["fallback_nodes"] and reps[0]["recipe"] == reps[1]["recipe"]  # the gate's fallback ran
    assert [s["node_kept_float"] for s in reps[0]["fallback"]["steps"]] == \
        [s["node_kept_float"] for s in reps[1]["fallback"]["steps"]]
    assert reps[0]["speed_rule"]["decisions"] == reps[1]["speed_rule"]["decisions"]
