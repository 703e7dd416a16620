"""Gate sanity and subgroups: real exports of tiny models through ONNX Runtime, no mocks.

The weak model is the case that once passed: an untrained classifier (FP32 AUROC 0.47, sensitivity 0.0)
validated on a copy of its calibration folder. INT8 agrees with it almost perfectly, so the drop budget
alone passed it. The subgroup model is a brightness classifier: one site's images are flat gray frames whose
means differ by a fraction of a grey level, below one INT8 activation step calibrated on varied images, so
INT8 ties them all (that site's AUROC 1.0 -> 0.5) while the overall AUROC moves by about 0.06.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edge.errors import InputError
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor, PreprocessSpec
from edge.inference.tasks import TASK_KINDS, Output, TaskConfig, build_task
from export import datasets, evaluate
from export.make_bundle import ExportOptions, GateFailed, WeakModel, run_export
from tests.support.export_inputs import (
    PRE,
    brightness_classifier,
    model_spec,
    quiet,
    random_classifier,
    save_model,
    write_csv,
    write_gray,
    write_images,
)


@pytest.fixture(scope="module")
def weak(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weak")
    calib = root / "calib"
    write_images(calib, 24, seed=1)
    val = root / "val"
    shutil.copytree(calib, val)  # the mistake: validation images are the calibration images
    y = np.random.default_rng(6).permutation(np.arange(24) % 2)  # labels the untrained model knows nothing of
    write_csv(val / "labels.csv", ["file", "label"], [[f"img{i:03d}.png", int(v)] for i, v in enumerate(y)])
    model = save_model(root / "random", random_classifier(seed=0), model_spec("classify", "random-cls", "logits"))
    return {"root": root, "calib": calib, "val": val, "model": model}


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sites")
    calib, val = root / "calib", root / "val"
    write_images(calib, 20, seed=1)
    write_gray(calib, "black.png", 0)  # the full range: one INT8 step is then about one grey level
    write_gray(calib, "white.png", 255)
    write_images(val, 40, seed=2)
    names = sorted(p.name for p in val.glob("*.png"))
    means = {n: float(cv2.imread(str(val / n), cv2.IMREAD_GRAYSCALE).mean()) for n in names}
    med = float(np.median(list(means.values())))
    rows = [[n, int(means[n] > med), "a", "acme" if i < 5 else "other"] for i, n in enumerate(names)]
    for i in range(20):  # site b: means 128 + 2i/1024 grey levels, the brighter half positive
        rows.append([write_gray(val, f"b{i:02d}.png", 128, bumped=2 * i), int(i >= 10), "b", "other"])
    write_csv(val / "labels.csv", ["file", "label", "site", "manufacturer"], rows)
    model = save_model(root / "bright", brightness_classifier(), model_spec("classify", "bright-cls", "logits"))
    return {"root": root, "calib": calib, "val": val, "model": model}


def _medge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edge.cli import main; main()", *args], capture_output=True,
                          text=True, timeout=120)


def test_floors_live_in_the_task_kind_registry():
    assert {k: t.min_fp32 for k, t in TASK_KINDS.items()} == {"classify": 0.6, "segment": 0.1, "detect": 0.1}


def test_sanity_at_the_floor_passes_and_an_undefined_metric_is_warned_not_refused():
    at = evaluate.Sanity("segment", "dice", 0.1, 0.1, labelled=True)
    assert not at.weak and at.warnings() == [] and at.to_dict()["passed"] is True
    one_class = evaluate.Sanity("classify", "auroc", 0.6, None, labelled=True)
    assert not one_class.weak and one_class.warnings() == ["gate sanity not checked: FP32 auroc is undefined on the "
                                                           "validation set (one class only?)"]
    assert evaluate.Sanity("classify", "auroc", 0.6, None, labelled=False).to_dict()["applies"] is False


def test_weak_model_is_refused_in_one_line_and_overlap_is_warned(weak):
    out = weak["root"] / "refused"
    r = _medge("export", "quantize", str(weak["model"]), "--calib", str(weak["calib"]), "--val", str(weak["val"]),
               "--out", str(out), "--latency-runs", "3")
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("medge: error: ")]
    assert len(errs) == 1, r.stderr
    err = errs[0]
    assert str(weak["model"]) in err and "--allow-weak-model" in err, err
    assert "auroc 0.4653 is below the floor 0.6 for classify" in err, err
    warn = [ln for ln in r.stderr.splitlines() if ln.startswith("WARNING: 24 of 24 validation file(s) are also in the "
                                                                "calibration set")]
    assert len(warn) == 1 and "img000.png, img001.png, img002.png:" in warn[0], r.stderr
    assert not out.exists()


def test_weak_model_allowed_is_exported_and_recorded(weak):
    out = weak["root"] / "allowed"
    logs: list[str] = []
    res = run_export(ExportOptions(model=weak["model"], calib=weak["calib"], val=weak["val"], out=out, latency_runs=3,
                                   allow_weak_model=True), log=logs.append)
    g = load_bundle(out).manifest.metrics["gate"]
    assert g["passed"] and g["weak_model_allowed"] is True  # the drop budget alone passes it: INT8 agrees
    assert g["sanity"]["metric"] == "auroc" and g["sanity"]["floor"] == 0.6 and g["sanity"]["passed"] is False
    assert g["sanity"]["fp32"] == pytest.approx(0.4653, abs=1e-4) and g["fp32"]["sensitivity"] == 0.0
    assert json.loads((out / "report.json").read_text())["gate"] == g == res.gate
    md = (out / "report.md").read_text()
    assert "Gate sanity: FP32 auroc 0.4653 below the floor 0.6 for classify - **WEAK MODEL" in md
    assert "- WARNING: 24 of 24 validation file(s) are also in the calibration set" in md
    assert any(w.startswith("24 of 24 validation file(s)") for w in res.warnings)
    assert any(w.startswith("weak model exported with --allow-weak-model") for w in g["warnings"])
    assert any(line.startswith("WARNING: weak model exported") for line in logs)


def test_without_val_the_sanity_check_does_not_apply_and_says_so(weak):
    out = weak["root"] / "agreement"
    logs: list[str] = []
    res = run_export(ExportOptions(model=weak["model"], calib=weak["calib"], val=None, out=out, latency_runs=3),
                     log=logs.append)
    assert res.gate["reference"] == "fp32" and res.gate["sanity"]["applies"] is False
    assert res.gate["weak_model_allowed"] is False and res.gate["warnings"] == []
    assert any(line.startswith("gate sanity: not applicable without --val") for line in logs), logs


def test_subgroup_table_reports_each_delta_and_small_subgroups_are_not_gated(sites):
    out = sites["root"] / "table"
    res = run_export(ExportOptions(model=sites["model"], calib=sites["calib"], val=sites["val"], out=out, latency_runs=3,
                                   max_drop=0.1, min_subgroup_samples=21), log=quiet)
    assert res.gate["passed"] and res.gate["drop"] < 0.1
    subs = {(s["column"], s["value"]): s for s in res.gate["subgroups"]}
    assert set(subs) == {("manufacturer", "acme"), ("manufacturer", "other"), ("site", "a"), ("site", "b")}
    b = subs[("site", "b")]
    assert b["n"] == 20 and b["fp32"]["auroc"] == 1.0 and b["int8"]["auroc"] == 0.5 and b["delta"] == -0.5
    assert not b["gated"] and b["passed"] and b["note"].startswith("too few samples, not gated")
    assert subs[("site", "a")]["gated"] and subs[("site", "a")]["n"] == 40 and subs[("manufacturer", "acme")]["n"] == 5
    assert load_bundle(out).manifest.metrics["gate"]["subgroups"] == res.gate["subgroups"]
    assert json.loads((out / "report.json").read_text())["gate"]["subgroups"] == res.gate["subgroups"]
    md = (out / "report.md").read_text()
    assert "| column | value | n | FP32 auroc | INT8 auroc | delta (INT8 - FP32) | gate |" in md
    assert "| site | b | 20 | 1.0000 | 0.5000 | -0.5000 | too few samples, not gated (< 21) |" in md
    assert "| site | a | 40 |" in md and md.count("| manufacturer |") == 2


def test_subgroup_over_budget_fails_the_gate_and_drives_the_float_fallback(sites):
    with pytest.raises(GateFailed, match=r"accuracy gate failed: subgroup site=b \(n 20\) auroc drop 0\.5000 exceeds "
                                         r"the budget 0\.1 even with 0 node") as e:
        run_export(ExportOptions(model=sites["model"], calib=sites["calib"], val=sites["val"], out=sites["root"] / "x",
                                 latency_runs=3, max_drop=0.1, max_fallback=0), log=quiet)
    assert not isinstance(e.value, WeakModel) and "\n" not in str(e.value)
    out = sites["root"] / "fallback"
    res = run_export(ExportOptions(model=sites["model"], calib=sites["calib"], val=sites["val"], out=out, latency_runs=3,
                                   max_drop=0.1, max_fallback=3), log=quiet)
    steps = json.loads((out / "report.json").read_text())["fallback"]["steps"]
    assert not steps[0]["passed"] and steps[0]["drop"] == 0.5  # the subgroup's drop is what the loop shrinks
    assert steps[0]["metrics"]["drop"] < 0.1  # while the overall drop was inside the budget
    assert steps[-1]["passed"] and res.gate["passed"] and "fc" in res.float_nodes
    assert all(s["passed"] for s in res.gate["subgroups"])


def _val_folder(root: Path) -> tuple[Path, list[Path]]:
    val = root / "val"
    write_images(val, 4, seed=3)
    return val, datasets.list_inputs(val, "validation")


@pytest.mark.parametrize(("csv_rows", "message"), [
    ([["img000.png", "a"], ["img001.png", "a"], ["img002.png", "b"]], r"subgroups.csv: no row for 1 validation file\(s\), e.g. img003.png"),
    ([["img000.png", "a"], ["img001.png", "a"], ["img002.png", "b"], ["img003.png", "b"], ["gone.png", "b"]],
     r"subgroups.csv:6: gone.png is not a file of the validation folder"),
    ([["img000.png", "a"], ["", "a"]], r"subgroups.csv:3: no file name"),
    ([["img000.png", "a", "extra"]], r"subgroups.csv:2: expected 2 values \(file,site\), got 3"),
    ([["img000.png", "a"], ["img000.png", "b"]], r"subgroups.csv:3: img000.png is listed twice"),
])
def test_subgroups_csv_errors_name_the_csv_and_the_row(tmp_path, csv_rows, message):
    val, files = _val_folder(tmp_path)
    write_csv(val / "subgroups.csv", ["file", "site"], csv_rows)
    with pytest.raises(InputError, match=message) as e:
        datasets.read_subgroups(val, files)
    assert str(val / "subgroups.csv") in str(e.value) and "\n" not in str(e.value)


def test_labels_csv_subgroup_columns_need_a_header_and_may_not_repeat_subgroups_csv(tmp_path):
    val, files = _val_folder(tmp_path)
    (val / "labels.csv").write_text("".join(f"img{i:03d}.png,{i % 2},siteA\n" for i in range(4)))
    with pytest.raises(InputError, match=r"labels.csv:1: columns after file,label need a header row"):
        datasets.read_subgroups(val, files)
    write_csv(val / "labels.csv", ["file", "label", "site"], [[f"img{i:03d}.png", i % 2, "x"] for i in range(4)])
    write_csv(val / "subgroups.csv", ["file", "site"], [[f"img{i:03d}.png", "y"] for i in range(4)])
    with pytest.raises(InputError, match=r"subgroups.csv:1: column 'site' is also in .*labels.csv"):
        datasets.read_subgroups(val, files)
    write_csv(val / "labels.csv", ["file", "label", "sex"], [[f"img{i:03d}.png", i % 2, "F" if i else ""]
                                                          for i in range(4)] + [["elsewhere.png", 0, "M"]])
    assert datasets.read_subgroups(val, files) == {"img000.png": {"site": "y"},  # empty value: in no sex subgroup
                                                   **{f"img{i:03d}.png": {"sex": "F", "site": "y"} for i in (1, 2, 3)}}


def _darkness_segmenter():
    """logit = 8 * (-1 - x): pixels darker than a quarter of full scale (after mean 0.5 / std 0.25) are the finding."""
    inits = [numpy_helper.from_array(np.array(-8.0, np.float32), "k"), numpy_helper.from_array(np.array(-8.0, np.float32), "c")]
    nodes = [helper.make_node("Mul", ["input", "k"], ["m"], name="mul"),
             helper.make_node("Add", ["m", "c"], ["mask_logits"], name="add")]
    g = helper.make_graph(nodes, "seg", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 32, 32])],
                          [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 1, 32, 32])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_segmentation_subgroups_from_subgroups_csv_gate_on_dice(tmp_path):
    """Real predictions of a real model on a masks/ folder; the INT8 side is FP32's with site b's masks emptied, so
    the expected outcome is known exactly and only the gate's subgroup logic is under test."""
    val = tmp_path / "val"
    write_images(val, 30, seed=5, h=32, w=32)
    (val / "masks").mkdir()
    for p in sorted(val.glob("*.png")):
        cv2.imwrite(str(val / "masks" / f"{p.name}.png"), (cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) < 64).astype(np.uint8) * 255)
    names = [p.name for p in datasets.list_inputs(val, "validation")]
    write_csv(val / "subgroups.csv", ["file", "site", "scanner"],
              [[n, "a" if i < 22 else "b", "s1" if i % 2 else "s2"] for i, n in enumerate(names)])
    model = save_model(tmp_path / "seg", _darkness_segmenter(), model_spec("segment", "dark-seg", "mask_logits"))
    spec = yaml.safe_load(model.with_name("model.yaml").read_text())
    vs = datasets.load_validation(val, "segment", Preprocessor(PreprocessSpec.from_dict(PRE)), ("finding",))
    task = build_task(TaskConfig("segment", ("finding",), (Output("mask_logits", "sigmoid"),), spec["threshold"],
                                 postprocess={"min_area_px": 1}))
    ref = evaluate.predict(model, vs, task)
    in_b = {i for i, s in enumerate(vs.samples) if vs.subgroups[s.file]["site"] == "b"}
    cand = evaluate.Predictions([np.zeros_like(p) if i in in_b else p for i, p in enumerate(ref.items)])
    g = evaluate.gate(vs, task, ref, cand, budget=0.02, min_subgroup_samples=8)
    subs = {(s.column, s.value): s for s in g.subgroups}
    assert [(k, s.n) for k, s in subs.items()] == [(("scanner", "s1"), 15), (("scanner", "s2"), 15), (("site", "a"), 22),
                                                    (("site", "b"), 8)]
    b = subs[("site", "b")]
    assert b.primary == "dice" and b.fp32["dice"] > 0.5 and b.int8["dice"] == 0.0 and b.drop == b.fp32["dice"]
    assert b.gated and not b.passed and subs[("site", "a")].passed and subs[("site", "a")].drop == 0.0
    assert not g.passed and "subgroup site=b (n 8) dice drop" in g.failures() and g.deciding_drop == b.drop
    g9 = evaluate.gate(vs, task, ref, cand, budget=0.02, min_subgroup_samples=9)  # 8 samples: reported, not gated
    b9 = next(s for s in g9.subgroups if s.value == "b")
    assert not b9.gated and b9.passed and b9.note == "too few samples, not gated (< 9)"
