"""Class-activation maps added at export: exact for pooled heads, refused (with the reason) for the rest."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.explain import add_cam, agreement


def _classifier(tmp_path, head: str, pool: str = "GlobalAveragePool", k: int = 3):
    """conv(1->8, 3x3) -> relu -> pool -> flatten -> linear head (Gemm, or MatMul + Add), on a 1x1x16x16 input."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["f"], name="c1", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["f"], ["fr"], name="r1"),
             helper.make_node(pool, ["fr"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["flat"], name="flat")]
    w = rng.normal(0, 1, (k, 8)).astype(np.float32)
    b = rng.normal(0, 1, k).astype(np.float32)
    if head == "gemm":
        inits += [numpy_helper.from_array(w, "wh"), numpy_helper.from_array(b, "bh")]
        nodes.append(helper.make_node("Gemm", ["flat", "wh", "bh"], ["logits"], name="head", transB=1, alpha=0.5))
    else:
        inits += [numpy_helper.from_array(w.T.copy(), "wh"), numpy_helper.from_array(b, "bh")]
        nodes += [helper.make_node("MatMul", ["flat", "wh"], ["mm"], name="head"),
                  helper.make_node("Add", ["mm", "bh"], ["logits"], name="bias")]
    g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 16, 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, k])], inits)
    path = tmp_path / f"{head}-{pool}.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_linear_head_cam_is_exact(tmp_path, head):
    path = _classifier(tmp_path, head)
    e = add_cam(path, "logits", 3)
    assert e.kind == "cam" and e.method == "linear-head" and e.shape == [1, 3, 16, 16]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(0, 1, (1, 1, 16, 16)).astype(np.float32)
    logits, cam = sess.run(["logits", e.output], {"input": x})
    # the spatial mean of each class's map is that class's logit (Zhou et al. 2016): exact, not approximate
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), logits, rtol=1e-4, atol=1e-4)


def test_heads_without_an_exact_map_are_refused_with_the_reason(tmp_path):
    e = add_cam(_classifier(tmp_path, "gemm", pool="GlobalMaxPool"), "logits", 3)
    assert e.kind == "none" and "not exact" in e.reason
    g = helper.make_graph([helper.make_node("Flatten", ["input"], ["flat"], name="f"),
                           helper.make_node("MatMul", ["flat", "w"], ["logits"], name="mm")], "mlp",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
                          [numpy_helper.from_array(np.ones((16, 2), np.float32), "w")])
    p = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    before = p.read_bytes()
    e = add_cam(p, "logits", 2)
    assert e.kind == "none" and "global pool" in e.reason and p.read_bytes() == before  # file untouched
    assert e.to_dict() == {"kind": "none", "reason": e.reason}


def test_agreement_tells_a_moved_map_from_a_rescaled_one():
    rng = np.random.default_rng(0)
    maps = [rng.normal(0, 1, (1, 1, 8, 8)).astype(np.float32) for _ in range(6)]
    same = agreement(maps, [m * 2 + 1 for m in maps])  # INT8 scaling/offset does not move the evidence
    assert same["correlation"] == pytest.approx(1.0) and same["peak_agreement"] == 1.0
    moved = agreement(maps, [np.roll(m, 4, axis=3) for m in maps])
    assert moved["correlation"] < 0.5 and moved["peak_agreement"] < 0.5
