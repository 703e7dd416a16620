"""Export without a hand-written spec: what the graph, the flags and the folders decide, and what is refused.

End to end through `medge export quantize` (real ONNX Runtime quantization, real bundles the device loads),
plus the resolver's decisions on small hand-built graphs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from benchmarks.make_models import resnet18
from edge.errors import InputError
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import build_task
from export.quantize import io_spec
from export.spec import SpecFlags, SpecResolver
from tests.support.export_inputs import write_images


def _medge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edge.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=300)


def _tiny(in_shape: list, out_channels: int, kind: str = "classify", final: str | None = None,
          name: str = "tiny") -> onnx.ModelProto:
    """input -> 1x1 conv -> (GAP -> Flatten for classify) [-> Sigmoid/Softmax]; static output shapes."""
    rng = np.random.default_rng(0)
    c = in_shape[1] if isinstance(in_shape[1], int) else 1
    w = numpy_helper.from_array(rng.standard_normal((out_channels, c, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv")]
    h, wd = in_shape[2], in_shape[3]
    if kind == "classify":
        nodes += [helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
                  helper.make_node("Flatten", ["g"], ["y"], name="flat")]
        out_shape = [1, out_channels]
    elif kind == "rank3":
        shape = numpy_helper.from_array(np.array([1, out_channels, -1], np.int64), "shape")
        nodes.append(helper.make_node("Reshape", ["c", "shape"], ["y"], name="reshape"))
        out_shape = [1, out_channels, None]
    elif kind == "rows":  # (N, K) rows, e.g. detections after NMS: not a batch-1 classifier
        shape = numpy_helper.from_array(np.array([-1, out_channels], np.int64), "shape")
        nodes.append(helper.make_node("Reshape", ["c", "shape"], ["y"], name="reshape"))
        out_shape = [None, out_channels]
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"], name="id"))
        out_shape = [1, out_channels, h, wd]
    if final == "Softmax+Flatten":  # a probability, then a reshape: the reshape does not undo the softmax
        nodes += [helper.make_node("Softmax", ["y"], ["p"], name="final", axis=1),
                  helper.make_node("Flatten", ["p"], ["out"], name="flat_out", axis=1)]
    elif final:
        nodes.append(helper.make_node(final, ["y"], ["out"], name="final", **({"axis": 1} if final == "Softmax" else {})))
    else:
        nodes.append(helper.make_node("Identity", ["y"], ["out"], name="final"))
    inits = [w] + ([shape] if kind in ("rank3", "rows") else [])
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _resolve(tmp_path: Path, model: onnx.ModelProto, flags: SpecFlags | None = None, spec: dict | None = None,
             val: Path | None = None, input_shape=None):
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(model, path)
    spec_path = None
    if spec is not None:
        spec_path = tmp_path / "m" / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
    r = SpecResolver(path, model, spec_path, flags or SpecFlags(), input_shape, val)
    pre = r.preprocess()
    pinned = onnx.load(str(path))
    for d, v in zip(pinned.graph.input[0].type.tensor_type.shape.dim, pre.input_shape, strict=True):
        d.Clear()
        d.dim_value = v
    prepared = onnx.shape_inference.infer_shapes(pinned)
    return r.complete(prepared, io_spec(prepared))


def test_graph_decides_task_colour_size_and_activation(tmp_path):
    r = _resolve(tmp_path, _tiny([1, 3, 40, 56], 3, final="Softmax"))
    s = r.spec
    assert s["task"] == "classify" and s["preprocess"]["size"] == [40, 56] and s["preprocess"]["color"] == "rgb"
    assert s["outputs"] == [{"name": "out", "activation": "none"}]  # the graph already ends in Softmax
    assert s["labels"] == ["class_0", "class_1", "class_2"] and any("labels not given" in n for n in r.notes)
    assert s["name"] == "m" and s["version"] == "0.1.0" and s["input"] == {"name": "input"}
    assert "graph" in r.origin["task"] and r.origin["labels"] == "placeholder names"
    r = _resolve(tmp_path, _tiny([1, 1, 32, 32], 1))
    assert r.spec["outputs"][0]["activation"] == "sigmoid" and r.spec["labels"] == ["finding"]
    r = _resolve(tmp_path, _tiny([1, 1, 16, 16], 2, kind="segment"))
    assert r.spec["task"] == "segment" and r.spec["outputs"][0]["activation"] == "softmax"
    assert r.spec["labels"] == ["background", "class_1"]
    # the text stored in the bundle is valid YAML and says where every value came from
    text = r.text()
    assert yaml.safe_load(text) == r.spec and "# graph: output shape [1, 2, 16, 16]" in text


def test_dynamic_dims_pinned_from_input_shape_or_the_spec_size_not_both(tmp_path):
    dyn = _tiny([1, 3, "h", "w"], 1)
    r = _resolve(tmp_path, dyn, input_shape=(1, 3, 24, 24))
    assert r.spec["preprocess"]["size"] == [24, 24]
    r = _resolve(tmp_path, dyn, spec={"preprocess": {"size": [20, 28]}})
    assert r.spec["preprocess"]["size"] == [20, 28] and r.spec["preprocess"]["color"] == "rgb"
    with pytest.raises(InputError, match=r"dynamic height or width; pass --input-shape 1x3xHxW"):
        _resolve(tmp_path, dyn)


def test_flags_override_the_spec_file_which_overrides_the_graph(tmp_path):
    spec = {"name": "from-file", "labels": ["normal", "opacity"], "threshold": 0.3,
            "preprocess": {"mean": [0.5], "std": [0.25]}}
    flags = SpecFlags(threshold=0.7, preprocess={"std": [0.5]}, urgent_labels=["opacity"])
    r = _resolve(tmp_path, _tiny([1, 1, 32, 32], 1), flags=flags, spec=spec)
    s = r.spec
    assert s["name"] == "from-file" and s["threshold"] == 0.7 and s["urgent_labels"] == ["opacity"]
    assert s["preprocess"]["mean"] == [0.5] and s["preprocess"]["std"] == [0.5]
    assert r.origin["threshold"] == "flag --threshold" and r.origin["name"] == "spec.yaml"
    assert any("normal never produce a finding" in n for n in r.notes)


@pytest.mark.parametrize(("model", "kw", "needle"), [
    (_tiny([1, 1, 8, 8], 3), {"flags": SpecFlags(labels=["a", "b"])}, "3 channels but 2 label(s)"),
    (_tiny([1, 1, 8, 8], 1), {"flags": SpecFlags(labels=["opacity", "normal"])}, "probability of 'normal'"),
    (_tiny([1, 1, 8, 8], 1), {"spec": {"postprocess": {"min_area_mm": 4}}}, "postprocess key 'min_area_mm' is unknown"),
    (_tiny([1, 1, 8, 8], 1), {"spec": {"postprocess": {"nms_iou": 0.3}}}, "postprocess.nms_iou is for detect models"),
    (_tiny([1, 1, 8, 8], 1), {"flags": SpecFlags(urgent_labels=["pneumothorax"])}, "urgent label(s) pneumothorax"),
    (_tiny([1, 1, 8, 8], 1), {"flags": SpecFlags(review_band=(0.7, 0.2))}, "review_band [0.7, 0.2]"),
    (_tiny([1, 1, 8, 8], 4, kind="rank3"), {}, "cannot tell the task"),
    (_tiny([1, 1, 8, 8], 1), {"spec": {"lables": ["x"]}}, "unknown key(s) lables"),
    (_tiny([1, 2, 8, 8], 1), {}, "has 2 channels"),
    (_tiny([1, 1, 8, 8], 6, kind="rows"), {}, "cannot tell the task"),
    (_tiny([1, 1, 8, 8], 1), {"spec": {"preprocess": [32, 32]}}, "preprocess must be a mapping"),
    (_tiny([1, 1, 8, 8], 1), {"spec": {"input": "x"}}, "input must be a mapping"),
    (_tiny([1, 1, 8, 8], 2), {"flags": SpecFlags(labels=["NORMAL", "Negative"])}, "every label (NORMAL, Negative)"),
])
def test_impossible_specs_are_refused_with_the_reason(tmp_path, model, kw, needle):
    with pytest.raises(InputError) as e:
        _resolve(tmp_path, model, **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_an_activation_before_a_reshape_is_still_the_last_one(tmp_path):
    r = _resolve(tmp_path, _tiny([1, 1, 8, 8], 3, final="Softmax+Flatten"))
    assert r.spec["outputs"][0]["activation"] == "none" and "ends in Softmax" in r.origin["outputs"]


def test_upper_case_normal_folder_is_background_on_the_device_too(tmp_path):
    r = _resolve(tmp_path, _tiny([1, 1, 8, 8], 2), flags=SpecFlags(labels=["NORMAL", "PNEUMONIA"]))
    assert any("NORMAL never produce a finding" in n for n in r.notes)
    from edge.inference.tasks import Output, TaskConfig

    task = build_task(TaskConfig("classify", ("NORMAL", "PNEUMONIA"), (Output("out", "softmax"),)))
    scores = task.model_space({"out": np.array([[4.0, 0.0]], np.float32)})
    assert scores.candidates == ()  # NORMAL won: no finding


def test_class_folders_name_labels_only_without_labels_csv(tmp_path):
    val = tmp_path / "val"
    write_images(val, 4, seed=3)
    write_images(val / "archive", 2, seed=4)  # an old batch kept beside the labelled images
    (val / "labels.csv").write_text("file,label\n" + "".join(f"img{i:03d}.png,{i % 2}\n" for i in range(4)))
    r = _resolve(tmp_path, _tiny([1, 1, 8, 8], 1), val=val)
    assert r.spec["labels"] == ["finding"] and r.origin["labels"] == "placeholder names"
    from export.datasets import list_inputs

    assert [p.name for p in list_inputs(val, "validation")] == [f"img{i:03d}.png" for i in range(4)]
    (val / "labels.csv").unlink()
    shutil.move(str(val / "archive"), str(val / "opacity"))
    (val / "normal").mkdir()
    for p in sorted(val.glob("img*.png")):
        shutil.move(str(p), str(val / "normal" / p.name))
    r = _resolve(tmp_path, _tiny([1, 1, 8, 8], 1), val=val)
    assert r.spec["labels"] == ["normal", "opacity"] and r.origin["labels"] == "validation class folders"


def test_two_output_detector_declares_both_and_needs_class_names(tmp_path):
    """boxes (1, 64, 4) and sigmoid scores (1, 64, 3) from one conv: the layout of many exported detectors."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((7, 1, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 7, -1], np.int64), "s"),
             numpy_helper.from_array(np.array([4, 3], np.int64), "sizes")]
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Reshape", ["c", "s"], ["r"], name="reshape"),
             helper.make_node("Transpose", ["r"], ["t"], name="t", perm=[0, 2, 1]),
             helper.make_node("Split", ["t", "sizes"], ["boxes", "logits"], name="split", axis=2),
             helper.make_node("Sigmoid", ["logits"], ["scores"], name="sig")]
    g = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 64, 4]),
                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 64, 3])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with pytest.raises(InputError, match="a detector with 3 score columns needs its class names"):
        _resolve(tmp_path, m, flags=SpecFlags(task="detect"))
    r = _resolve(tmp_path, m, flags=SpecFlags(task="detect", labels=["a", "b", "c"]))
    assert [o["name"] for o in r.spec["outputs"]] == ["boxes", "scores"]
    assert r.spec["outputs"][0]["activation"] == "none" and "ends in Sigmoid" in r.origin["outputs"]


def _fp32_class(model: Path, files: list[Path]) -> dict[Path, int]:
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    from edge.inference.preprocess import PreprocessSpec

    pre = Preprocessor(PreprocessSpec.from_dict({"size": [32, 32]}))
    scores = {p: float(s.run(None, {"input": pre.apply_pixels(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))[0]})[0]
                        .reshape(-1)[-1]) for p in files}
    med = float(np.median(list(scores.values())))
    return {p: int(v > med) for p, v in scores.items()}


@pytest.mark.slow
def test_one_command_export_then_the_saved_spec_reproduces_it_with_class_folder_validation(tmp_path):
    """A newcomer's path: a model, a folder of images, one command; then the same with labelled data."""
    work = tmp_path / "mymodel"
    work.mkdir()
    model = work / "model.onnx"
    onnx.save(resnet18(size=32), model)
    calib = tmp_path / "calib"
    write_images(calib, 24, seed=1)
    r = _medge("export", "quantize", str(model), "--calib", str(calib), "--latency-runs", "3",
               "--write-spec", str(tmp_path / "spec.yaml"), "--modality", "cr")
    assert r.returncode == 0, r.stderr
    out = work / "mymodel-0.1.0-cpu"
    # random weights: FP32 may call every input one class, and AUROC then falls back to accuracy
    assert r.stdout.startswith((f"{out}: auroc drop", f"{out}: accuracy drop")), r.stdout
    assert "vs FP32's own decisions (no --val)" in r.stdout and "-0.0000" not in r.stdout
    assert "model spec used:" in r.stderr and "note: labels not given" in r.stderr and "agreement" in r.stderr
    b = load_bundle(out)
    m = b.manifest
    assert m.name == "mymodel" and m.labels == ("finding",) and m.preprocess.size == (32, 32)
    assert m.raw["outputs"][0]["activation"] == "sigmoid" and m.metrics["gate"]["reference"] == "fp32"
    stored = yaml.safe_load((out / "model_spec.yaml").read_text())
    assert stored == yaml.safe_load((tmp_path / "spec.yaml").read_text())
    assert stored["preprocess"] == m.raw["preprocess"] and stored["labels"] == list(m.labels)
    build_task(m)  # the device decodes with what was stored

    # the saved spec, edited as a user would, plus a folder-per-class validation set
    val = tmp_path / "val"
    write_images(tmp_path / "flat", 30, seed=2)
    for p, k in _fp32_class(model, sorted((tmp_path / "flat").glob("*.png"))).items():
        (val / ("opacity" if k else "normal")).mkdir(parents=True, exist_ok=True)
        shutil.move(p, val / ("opacity" if k else "normal") / p.name)
    spec = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    del spec["labels"]  # now named by the class folders
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    r = _medge("export", "quantize", str(model), "--calib", str(calib), "--val", str(val), "--spec",
               str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "b2"), "--latency-runs", "3", "--max-drop", "0.2")
    assert r.returncode == 0, r.stderr
    assert "vs its labels" in r.stdout and "normal never produce a finding" in r.stderr
    m2 = load_bundle(tmp_path / "b2").manifest
    assert m2.labels == ("normal", "opacity") and m2.metrics["gate"]["reference"] == "labels"
    assert m2.metrics["gate"]["fp32"]["auroc"] == 1.0  # the class folders were FP32's own split: truth was read right
    assert m2.raw["preprocess"] == m.raw["preprocess"]
