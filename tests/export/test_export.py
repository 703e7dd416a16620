"""Export toolchain: real ONNX Runtime quantization of tiny models from real calibration folders.

Calibration folders hold synthetic PNGs plus real DICOM files from pydicom-data (a CR and an ultrasound
object), read through the device's DICOM reader. Validation labels for the random-weight test models are
the FP32 model's own decisions, so FP32 scores perfectly and the gate measures exactly what quantization
loses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from pydicom.data import get_testdata_file

from benchmarks.make_models import resnet18, unet
from edge.errors import BundleError, InputError
from edge.inference import metrics
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor, PreprocessSpec
from export.make_bundle import ExportOptions, GateFailed, run_export
from export.sign import keygen, sign_bundle, verify_bundle
from tests.support.export_inputs import PRE, model_spec, quiet, save_model, write_images


def _fp32_scores(model_path: Path, folder: Path, size: int) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    s = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    pre = Preprocessor(PreprocessSpec.from_dict({**PRE, "size": [size, size]}))
    out = {}
    for p in sorted(folder.glob("*.png")):
        t, g = pre.apply_pixels(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))
        out[p.name] = (s.run(None, {"input": t})[0], g)
    return out


def _pseudo_labels(model_path: Path, val: Path, size: int = 32) -> None:
    """labels.csv from the FP32 model's own scores (above the median = positive)."""
    sc = {k: float(v[0].reshape(-1)[-1]) for k, v in _fp32_scores(model_path, val, size).items()}
    med = float(np.median(list(sc.values())))
    (val / "labels.csv").write_text("file,label\n" + "".join(f"{k},{int(v > med)}\n" for k, v in sc.items()))


def _outlier_classifier() -> onnx.ModelProto:
    """logit = Gemm(GAP(Relu(Conv(x)))) + Relu(1000 * (mean(x) - 0.5)).

    The second term is zero for ordinary images and huge for an over-exposed one, so one white calibration
    frame stretches the logit's INT8 range until ordinary logits collapse onto a few levels. Keeping the
    final Add in float fixes it: a realistic failure the fallback loop must find by itself.
    """
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32) * 0.5
    inits = [numpy_helper.from_array(w, "cw"), numpy_helper.from_array(np.zeros(8, np.float32), "cb"),
             numpy_helper.from_array(rng.standard_normal((8, 1)).astype(np.float32), "gw"),
             numpy_helper.from_array(np.zeros(1, np.float32), "gb"),
             numpy_helper.from_array(np.array([0.5], np.float32), "t"),
             numpy_helper.from_array(np.array([1000.0], np.float32), "k"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "shape11")]
    nodes = [
        helper.make_node("Conv", ["input", "cw", "cb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "gw", "gb"], ["s"], name="fc"),
        helper.make_node("GlobalAveragePool", ["input"], ["m4"], name="mean"),
        helper.make_node("Reshape", ["m4", "shape11"], ["m"], name="reshape"),
        helper.make_node("Sub", ["m", "t"], ["d"], name="sub"),
        helper.make_node("Mul", ["d", "k"], ["e"], name="mul"),
        helper.make_node("Relu", ["e"], ["o"], name="relu_outlier"),
        helper.make_node("Add", ["s", "o"], ["logits"], name="add_logit"),
    ]
    g = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 32, 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    calib, val = root / "calib", root / "val"
    write_images(calib, 20, seed=1)
    for name in ("RG1_UNCI.dcm", "US1_J2KR.dcm"):  # real CR and ultrasound objects, device DICOM reader
        shutil.copy(get_testdata_file(name), calib / name)
    write_images(val, 24, seed=2)
    cls = save_model(root / "cls", resnet18(size=32), model_spec("classify", "tiny-cls", "logits"))
    _pseudo_labels(cls, val)
    seg = save_model(root / "seg", unet(size=32, widths=(8, 16, 32), up="convtranspose"),
                model_spec("segment", "tiny-seg", "mask_logits", postprocess={"mask_threshold": 0.5}))
    (val / "masks").mkdir()
    scores = _fp32_scores(seg, val, 32)
    thr = float(np.median(np.concatenate([v[0].reshape(-1) for v in scores.values()])))
    for k, (y, g) in scores.items():  # FP32's own mask (threshold at the median logit) mapped back to the image
        cv2.imwrite(str(val / "masks" / f"{k}.png"), g.mask_to_frame(y[0, 0] > thr) * 255)
    spec = yaml.safe_load((root / "seg" / "model.yaml").read_text())
    spec["postprocess"]["mask_threshold"] = float(1 / (1 + np.exp(-thr)))
    (root / "seg" / "model.yaml").write_text(yaml.safe_dump(spec))
    calib_w = root / "calib_white"
    shutil.copytree(calib, calib_w)
    write_images(calib_w, 0, seed=9, white=True)
    out = save_model(root / "outlier", _outlier_classifier(), model_spec("classify", "outlier-cls", "logits"))
    val_o = root / "val_outlier"
    write_images(val_o, 40, seed=4)
    _pseudo_labels(out, val_o)
    priv, pub, _ = keygen(root / "keys" / "signing.pem")
    return {"root": root, "calib": calib, "val": val, "cls": cls, "seg": seg, "calib_white": calib_w, "outlier": out,
            "val_outlier": val_o, "priv": priv, "pub": pub}


def _inits(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}


@pytest.fixture(scope="module")
def cpu_bundle(ws) -> Path:
    out = ws["root"] / "bundles" / "cls-cpu"
    run_export(ExportOptions(model=ws["cls"], calib=ws["calib"], val=ws["val"], out=out, target="cpu", latency_runs=5,
                             max_drop=0.05, sign_key=ws["priv"]), log=quiet)
    return out


def test_cpu_recipe_is_u8s8_per_channel_and_bundle_loads_signed(ws, cpu_bundle):
    b = load_bundle(cpu_bundle, trusted_keys=[ws["pub"]], require_signature=True)
    m = b.manifest
    assert b.signed_by and m.default_variant == "int8" and m.target == "cpu"
    assert m.preprocess == PreprocessSpec.from_dict(PRE) and m.raw["preprocess_sha256"] == m.preprocess.sha256()
    from export.runtimes import installed

    own = {"model.int8.openvino.onnx"} if "openvino" in installed() else set()  # OpenVINO's own file (gated there)
    assert set(m.files) == {"model.fp32.onnx", "model.int8.onnx", "model_spec.yaml", "report.json", "report.md"} | own
    assert m.calibration["inputs"] == 22 and m.metrics["gate"]["passed"]
    q = onnx.load(str(b.model_path("int8")))
    inits = _inits(q)
    act_zp = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert act_zp and all(z.dtype == np.uint8 for z in act_zp)  # uint8 activations: the fast CPU form
    by_out = {o: n for n in q.graph.node for o in n.output}
    w_dq = [by_out[n.input[1]] for n in q.graph.node if n.op_type == "Conv" and n.input[1] in by_out]
    assert w_dq and all(inits[d.input[0]].dtype == np.int8 for d in w_dq)
    # 7-bit weights: u8 x s8 pairs cannot saturate the 16-bit sums of non-VNNI x86 kernels
    assert m.variants["int8"].recipe["reduce_range"] is True
    assert all(np.abs(inits[d.input[0]].astype(np.int32)).max() <= 64 for d in w_dq)
    assert all(inits[d.input[1]].size == inits[d.input[0]].shape[0] > 1 for d in w_dq)  # per output channel
    assert any(inits.get(n.input[0]) is not None and inits[n.input[0]].dtype == np.int32
               for n in q.graph.node if n.op_type == "DequantizeLinear")  # bias quantized (int32) on CPU
    # the 1-channel stem conv stays float only if that measured faster; either way the graph matches the record
    rep = json.loads((cpu_bundle / "report.json").read_text())
    rule = rep["speed_rule"]
    assert rule["narrow_convs"] == ["conv_1"] and rule["int8_ms_all_quantized"] > 0
    stem = next(n for n in q.graph.node if n.name == "conv_1")
    if rule["kept_float"]:
        assert "conv_1" in m.variants["int8"].recipe["nodes_to_exclude"] and inits[stem.input[1]].dtype == np.float32
    else:
        assert "conv_1" not in m.variants["int8"].recipe["nodes_to_exclude"] and stem.input[1] not in inits
    from export.runtimes import installed

    others = {f"{v}@{rt}" for rt in installed() if rt != "onnxruntime" for v in ("fp32", "int8")}
    assert set(rep["latency"]["variants"]) == {"fp32", "int8"} | others and rep["latency"]["variants"]["int8"]["median_ms"] > 0
    # the INT8 file was gated on every installed CPU runtime; the manifest offers those that passed
    assert set(rep["gate"]["runtimes"]) == set(installed()) and rep["gate"]["measured_on"] == "onnxruntime"
    assert list(m.runtimes) == [rt for rt in installed() if rep["gate"]["runtimes"][rt]["passed"]]
    md = (cpu_bundle / "report.md").read_text()
    assert "| fp32 |" in md
    # a CPU bundle whose INT8 is not meaningfully faster here says so, in the report and the manifest's latency
    slow = rep["latency"]["speedup_int8"] < 1.1
    assert ("WARNING: INT8 is not meaningfully faster" in md) == slow == ("warning" in rep["latency"])


def test_tensorrt_recipe_is_symmetric_s8_no_bias_and_convtranspose_axis1(ws):
    out = ws["root"] / "bundles" / "seg-trt"
    res = run_export(ExportOptions(model=ws["seg"], calib=ws["calib"], val=ws["val"], out=out, target="tensorrt",
                                   latency_runs=3, max_drop=0.2), log=quiet)
    b = load_bundle(out)
    assert set(b.manifest.variants) == {"fp32", "int8", "fp16"} and res.gate["primary_metric"] == "dice"
    q = onnx.load(str(b.model_path("int8")))
    inits = _inits(q)
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
           and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # symmetric: zero point 0, int8
    assert not any(v.dtype == np.int32 for v in inits.values())  # bias not quantized
    by_out = {o: n for n in q.graph.node for o in n.output}
    convt = [n for n in q.graph.node if n.op_type == "ConvTranspose"]
    assert convt
    for n in convt:
        dq = by_out[n.input[1]]
        axis = next(a.i for a in dq.attribute if a.name == "axis")
        assert dq.op_type == "DequantizeLinear" and axis == 1
        assert inits[dq.input[1]].size == inits[dq.input[0]].shape[1]  # one scale per output channel
        assert inits[n.input[2]].dtype == np.float32
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert all(next(a.i for a in by_out[n.input[1]].attribute if a.name == "axis") == 0 for n in convs)
    half = onnx.load(str(b.model_path("fp16")))
    assert half.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # keep_io_types
    assert any(i.data_type == TensorProto.FLOAT16 for i in half.graph.initializer)


def test_gate_finds_the_sensitive_node_and_keeps_it_float(ws):
    out = ws["root"] / "bundles" / "outlier"
    res = run_export(ExportOptions(model=ws["outlier"], calib=ws["calib_white"], val=ws["val_outlier"], out=out,
                                   target="cpu", latency_runs=3, max_drop=0.01), log=quiet)
    rep = json.loads((out / "report.json").read_text())
    steps = rep["fallback"]["steps"]
    assert not steps[0]["passed"] and steps[0]["drop"] > 0.01  # plain INT8 fails the gate
    assert steps[-1]["passed"] and len(steps) >= 2 and res.gate["passed"]
    fb = load_bundle(out).manifest.variants["int8"].recipe["fallback_nodes"]
    assert "add_logit" in fb and fb == rep["recipe"]["fallback_nodes"]
    assert all("speedup_vs_fp32" in s for s in steps)
    assert "by the accuracy fallback: " in (out / "report.md").read_text()


def test_gate_that_cannot_pass_says_so_and_leaves_nothing(ws):
    out = ws["root"] / "bundles" / "never"
    with pytest.raises(GateFailed, match=r"accuracy gate failed: auroc drop .* exceeds the budget 0.01 even with 0 node"):
        run_export(ExportOptions(model=ws["outlier"], calib=ws["calib_white"], val=ws["val_outlier"], out=out,
                                 target="cpu", latency_runs=3, max_drop=0.01, max_fallback=0), log=quiet)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".never")]  # no staging left-overs


def test_tampered_model_manifest_or_signature_is_refused(ws, cpu_bundle, tmp_path):
    def fresh() -> Path:
        d = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(cpu_bundle, d)
        return d

    keys = [ws["pub"]]
    verify_bundle(fresh(), keys)
    d = fresh()
    with open(d / "model.int8.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x01\x02\x03")
    with pytest.raises(BundleError, match=r"model.int8.onnx: SHA-256 mismatch"):
        verify_bundle(d, keys)
    d = fresh()
    (d / "manifest.yaml").write_text((d / "manifest.yaml").read_text().replace("threshold: 0.5", "threshold: 0.05"))
    with pytest.raises(BundleError, match="signature does not verify"):
        verify_bundle(d, keys)
    d = fresh()
    sig = bytearray((d / "manifest.sig").read_bytes())
    sig[0] ^= 0xFF
    (d / "manifest.sig").write_bytes(bytes(sig))
    with pytest.raises(BundleError, match="signature does not verify"):
        verify_bundle(d, keys)
    d = fresh()  # re-signing a tampered bundle is refused too: sign verifies hashes first
    (d / "report.md").write_text("edited")
    with pytest.raises(BundleError, match="report.md: SHA-256 mismatch"):
        sign_bundle(d, ws["priv"])
    r = _medge("export", "verify", str(d), "--key", str(ws["pub"]))
    assert r.returncode != 0 and "report.md: SHA-256 mismatch" in r.stderr


def _medge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edge.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=120)


def _one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errs = [ln for ln in lines if ln.startswith("medge: error: ")]
    assert len(errs) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in errs[0], errs[0]


def test_bad_inputs_give_one_clear_line_and_no_output(ws, tmp_path):
    base = ["export", "quantize"]
    calib, val = str(ws["calib"]), str(ws["val"])
    # not an ONNX file
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"this is not a protobuf")
    shutil.copy(ws["cls"].with_name("model.yaml"), bad / "model.yaml")
    r = _medge(*base, str(bad / "model.onnx"), "--calib", calib, "--val", val, "--out", str(tmp_path / "o1"))
    _one_line_error(r, "model.onnx", "not a valid ONNX model")
    # unreadable calibration image
    cal2 = tmp_path / "cal_corrupt"
    shutil.copytree(ws["calib"], cal2)
    (cal2 / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = _medge(*base, str(ws["cls"]), "--calib", str(cal2), "--val", val, "--out", str(tmp_path / "o2"))
    _one_line_error(r, "broken.png", "unreadable image")
    # empty calibration folder
    (tmp_path / "empty").mkdir()
    r = _medge(*base, str(ws["cls"]), "--calib", str(tmp_path / "empty"), "--val", val, "--out", str(tmp_path / "o3"))
    _one_line_error(r, "empty", "calibration folder has no images")
    # dynamic spatial dims with neither --input-shape nor a size in the spec
    dyn = tmp_path / "dyn"
    m = onnx.load(str(ws["cls"]))
    for i, name in ((2, "height"), (3, "width")):
        m.graph.input[0].type.tensor_type.shape.dim[i].dim_param = name
    spec = yaml.safe_load(ws["cls"].with_name("model.yaml").read_text())
    del spec["preprocess"]["size"]
    save_model(dyn, m, spec)
    r = _medge(*base, str(dyn / "model.onnx"), "--calib", calib, "--val", val, "--out", str(tmp_path / "o4"))
    _one_line_error(r, "dynamic height or width", "--input-shape 1x1xHxW")
    # labels missing from the validation set
    val2 = tmp_path / "val_nolabels"
    shutil.copytree(ws["val"], val2)
    (val2 / "labels.csv").unlink()
    r = _medge(*base, str(ws["cls"]), "--calib", calib, "--val", str(val2), "--out", str(tmp_path / "o5"))
    _one_line_error(r, "labels.csv", "labels missing")
    for i in range(1, 6):
        assert not (tmp_path / f"o{i}").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o")]


def test_dynamic_dims_with_input_shape_and_existing_output_refused(ws, tmp_path):
    from export.quantize import prepare_model

    m = onnx.load(str(ws["cls"]))
    for i in (0, 2, 3):
        m.graph.input[0].type.tensor_type.shape.dim[i].dim_param = f"d{i}"
    src = tmp_path / "dyn.onnx"
    onnx.save(m, src)
    io = prepare_model(src, tmp_path / "fixed.onnx", PreprocessSpec.from_dict(PRE), (1, 1, 32, 32))
    assert io["input"]["shape"] == [1, 1, 32, 32] and io["outputs"][0]["shape"] == [1, 1]
    with pytest.raises(InputError, match="does not match the preprocessing spec"):
        prepare_model(src, tmp_path / "x.onnx", PreprocessSpec.from_dict({**PRE, "size": [64, 64]}), (1, 1, 32, 32))
    (tmp_path / "exists").mkdir()
    with pytest.raises(InputError, match="output folder already exists"):
        run_export(ExportOptions(model=ws["cls"], calib=ws["calib"], val=ws["val"], out=tmp_path / "exists"), log=quiet)


def test_cli_keygen_sign_verify_roundtrip(ws, cpu_bundle, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(cpu_bundle, d)
    (d / "manifest.sig").unlink()
    r = _medge("export", "keygen", str(tmp_path / "k.pem"))
    assert r.returncode == 0 and (tmp_path / "k.pub.pem").exists()
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    r = _medge("export", "sign", str(d), "--key", str(tmp_path / "k.pem"))
    assert r.returncode == 0, r.stderr
    r = _medge("export", "verify", str(d), "--key", str(tmp_path / "k.pub.pem"))
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr
    r = _medge("export", "verify", str(d), "--key", str(ws["pub"]))  # a different, untrusted key
    _one_line_error(r, "signature does not verify")


def test_metrics_against_hand_computed_values():
    y = np.array([0, 0, 1, 1, 1, 0])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.35])
    assert metrics.auroc(y, s) == pytest.approx(7.5 / 9)  # 7 wins, 1 tie (0.35 vs 0.35), 1 loss
    c = metrics.classification(y, s, 0.5)
    assert c["sensitivity"] == pytest.approx(2 / 3) and c["specificity"] == 1.0
    g = np.zeros((4, 4), bool)
    g[:2, :2] = True
    p = np.zeros((4, 4), bool)
    p[:2, :] = True
    seg = metrics.segmentation([g], [p])
    assert seg["dice"] == pytest.approx(2 * 4 / 12) and seg["iou"] == pytest.approx(0.5) and seg["area_error"] == 1.0
    det = metrics.detection([np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 0]])],
                            [np.array([[1, 1, 10, 10, 0, 0.9], [50, 50, 60, 60, 0, 0.8]])])
    assert det == {"recall": 0.5, "precision": 0.5}


def _tiny_detector() -> onnx.ModelProto:
    """A 4x4 grid of fixed 8x8 px boxes scored by a strided conv: output (1, 16, 5) = x0 y0 x1 y1 logit."""
    rng = np.random.default_rng(5)
    ys, xs = np.mgrid[0:4, 0:4] * 8
    boxes = np.stack([xs, ys, xs + 8, ys + 8], -1).reshape(1, 16, 4).astype(np.float32)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 1, 8, 8)) * 0.2).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b"),
             numpy_helper.from_array((rng.standard_normal((1, 4, 1, 1))).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(1, np.float32), "b2"),
             numpy_helper.from_array(boxes, "boxes"),
             numpy_helper.from_array(np.array([1, 16, 1], np.int64), "shp")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["s"], name="score", kernel_shape=[1, 1]),
             helper.make_node("Reshape", ["s", "shp"], ["s3"], name="reshape"),
             helper.make_node("Concat", ["boxes", "s3"], ["detections"], name="concat", axis=2)]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 32, 32])],
                          [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [1, 16, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_detection_bundle_gates_on_recall_precision(ws):
    det = save_model(ws["root"] / "det", _tiny_detector(), model_spec("detect", "tiny-det", "detections", threshold=0.5))
    val = ws["root"] / "val_det"
    shutil.copytree(ws["val"], val, ignore=shutil.ignore_patterns("labels.csv", "masks"))
    boxes = {}
    for name, (y, g) in _fp32_scores(det, val, 32).items():  # FP32's positive boxes, mapped to image pixels
        rows = y.reshape(16, 5)
        keep = rows[1 / (1 + np.exp(-rows[:, 4])) >= 0.5]
        pts = [g.points_to_frame(np.array([[r[0], r[1]], [r[2], r[3]]])).reshape(-1).tolist() for r in keep]
        boxes[name] = [[*p, "finding"] for p in pts]
    assert sum(len(v) for v in boxes.values()) > 5
    (val / "boxes.json").write_text(json.dumps(boxes))
    out = ws["root"] / "bundles" / "det"
    res = run_export(ExportOptions(model=det, calib=ws["calib"], val=val, out=out, target="cpu", latency_runs=3,
                                   max_drop=0.2), log=quiet)
    assert res.gate["primary_metric"] == "recall"  # FP32 reproduces its own boxes (float32 vs float64 at the edge)
    assert res.gate["fp32"]["recall"] > 0.99 and res.gate["fp32"]["precision"] > 0.99
    assert load_bundle(out).manifest.task == "detect"


def test_small_or_uniform_calibration_set_is_warned_about(ws, tmp_path):
    from export.datasets import calibration_summary, load_samples

    same = tmp_path / "same"
    same.mkdir()
    for i in range(5):
        shutil.copy(ws["calib"] / "img000.png", same / f"copy{i}.png")
    pre = Preprocessor(PreprocessSpec.from_dict(PRE))
    summary, warnings = calibration_summary(load_samples(same, pre, "calibration"))
    assert any("small (5 inputs" in w for w in warnings) and any("too uniform" in w for w in warnings)
    assert summary["warnings"] == warnings
    _, ok = calibration_summary(load_samples(ws["calib"], pre, "calibration"), min_samples=8)
    assert ok == []


def test_report_uses_one_sign_for_a_drop_and_never_calls_a_slowdown_faster(cpu_bundle):
    from export.report import drop_text, render_md, speed_phrase

    assert drop_text(0.0197) == "drop 0.0197" and drop_text(-0.0) == "drop 0.0000" and drop_text(-1e-6) == "drop 0.0000"
    assert drop_text(-0.0123) == "no drop (INT8 better by 0.0123)"
    assert speed_phrase(1.84) == "1.84x faster than FP32" and speed_phrase(0.91) == "0.91x the speed of FP32 (slower)"
    rep = json.loads((cpu_bundle / "report.json").read_text())
    rep["gate"].update(drop=-0.0123, delta_int8_minus_fp32={k: 0.0123 if v is not None else None
                                                             for k, v in rep["gate"]["fp32"].items()})
    lat = rep["latency"]["variants"]
    lat["int8"]["median_ms"] = lat["fp32"]["median_ms"] / 0.9
    md = render_md(rep)
    assert "no drop (INT8 better by 0.0123)" in md and "| +0.0123 |" in md and "-0.0" not in md
    assert "0.90x (slower)" in md and "Accuracy (validation" in md
    rep["gate"]["reference"] = "fp32"
    assert "Agreement with FP32" in render_md(rep) and "not clinical accuracy" in render_md(rep)
