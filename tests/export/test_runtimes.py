"""Export gates the INT8 file on every installed CPU runtime, and a runtime that fails is not offered."""

from __future__ import annotations

import pytest

from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import build_task
from export import datasets, evaluate
from export.make_bundle import ExportOptions, _gate_on_runtimes, run_export
from export.runtimes import installed
from models.datasets import write_cxr
from tests.support import ROOT

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'medge[openvino]')")
MODEL = ROOT / "models/cxr_opacity/model.onnx"


def test_each_runtime_is_gated_on_its_own_and_one_that_fails_is_not_offered(tmp_path):
    calib = write_cxr(tmp_path / "calib", 16, seed=11, size=256)
    val = write_cxr(tmp_path / "val", 24, seed=12, size=256)
    opts = ExportOptions(model=MODEL, calib=calib, val=val, out=tmp_path / "b", latency_runs=3)
    res = run_export(opts, log=lambda m: None)
    b = load_bundle(res.out)
    assert set(res.gate["runtimes"]) == set(installed()) == {"onnxruntime", "openvino"}
    assert list(b.manifest.runtimes) == ["onnxruntime", "openvino"]  # both passed: both offered
    for rt, v in res.gate["runtimes"].items():
        assert v["file"] == b.variant("int8").file_for(rt) and v["int8_ms"] > 0

    # the same gate with a budget nothing can meet: OpenVINO is judged on its own outputs and fails
    vs = datasets.load_validation(val, "classify", Preprocessor(b.manifest.preprocess), b.manifest.labels)
    task = build_task(b.manifest)
    ref = evaluate.predict(b.model_path("fp32"), vs, task)
    ort = evaluate.gate(vs, task, ref, evaluate.predict(b.model_path("int8"), vs, task), 0.01)
    lines: list[str] = []
    gates = _gate_on_runtimes(opts, vs, task, ref, b.model_path("int8"), True, -1.0, {"onnxruntime": ort},
                              lines.append)
    assert gates["onnxruntime"] is ort and not gates["openvino"].passed
    assert [rt for rt, g in gates.items() if g.passed] == ["onnxruntime"]
    assert any("devices will not run this bundle on openvino" in ln for ln in lines)
