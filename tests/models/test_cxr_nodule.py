"""The reference nodule detector: the generator's boxes are where it drew the nodules, the `nodule` dataset
kind writes a boxes.json the export toolchain reads, and the committed signed bundle finds the sample's
nodules through the device's own code path (real ONNX Runtime sessions) and nothing on the normal sample."""

import json

import numpy as np
import onnxruntime as ort
import pydicom
import pytest
import yaml

from edge.commands.replay import replay_file
from edge.frames import Frame
from edge.inference.bundle import load_bundle
from edge.inference.metrics import box_iou
from edge.inference.preprocess import Preprocessor, PreprocessSpec
from models import datasets, make_samples, synth_xray
from models.synth_dicom import CR_IMAGE_STORAGE
from tests.support import ROOT
from tests.support.files import sha256

MODELS = ROOT / "models"
MODEL_DIR = MODELS / "cxr_nodule"
SAMPLES = MODELS / "samples"
BUNDLE = MODELS / "bundles" / "cxr-nodule"
KEYS = [MODELS / "keys" / "demo-signing.pub.pem"]


def _meta():
    return yaml.safe_load((MODEL_DIR / "model.yaml").read_text())


def _disk_and_ring(shape, n, inner=0.5, ring=(1.6, 2.6)):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    d = np.sqrt((xx - n.cx) ** 2 + (yy - n.cy) ** 2) / n.radius
    return d < inner, (d > ring[0]) & (d < ring[1])


# ---------------------------------------------------------------- generator


def test_nodule_boxes_are_where_the_nodules_were_drawn():
    """Same seed with and without nodules: the anatomy is the same, so the difference image holds the nodules
    (plus noise): denser inside each box's disk than in a ring around it, and the box is the disk's square."""
    for seed, size in ((3, 512), (7, 384)):
        with_n = synth_xray.make_phantom(seed, size=size, opacity=False, nodules=3)
        without = synth_xray.make_phantom(seed, size=size, opacity=False, nodules=0)
        assert without.nodules == () and len(with_n.nodules) == 3 and with_n.opacity is None
        again = synth_xray.make_phantom(seed, size=size, opacity=False, nodules=3)
        assert np.array_equal(with_n.stored, again.stored) and with_n.nodules == again.nodules
        diff = with_n.stored.astype(float) - without.stored.astype(float)  # MONOCHROME2: denser = higher
        lungs = synth_xray.phantom_display(without) < 0.5  # aerated lung is dark on display
        for n in with_n.nodules:
            x0, y0, x1, y1 = n.box
            assert (x1 - x0, y1 - y0) == pytest.approx((2 * n.radius, 2 * n.radius))
            assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((n.cx, n.cy))
            assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size
            assert 3.0 <= n.radius_mm <= 9.0  # a few mm with the phantom's pixel spacing
            assert n.radius_mm == pytest.approx(n.radius * with_n.spacing_mm[0], abs=0.01)
            assert n.cx < 0.55 * size if n.side == "right" else n.cx > 0.45 * size  # patient right = image left
            disk, ring = _disk_and_ring(diff.shape, n)
            assert diff[disk].mean() - diff[ring].mean() > 150  # stored units (window widths ~1500-2500): visible, modest
            assert lungs[int(round(n.cy)), int(round(n.cx))]  # drawn inside a lung field


def test_existing_phantoms_do_not_change_with_the_nodule_option():
    a = synth_xray.make_phantom(21, size=256, opacity=True)
    b = synth_xray.make_phantom(21, size=256, opacity=True, nodules=0)
    assert np.array_equal(a.stored, b.stored) and a.opacity == b.opacity and a.window == b.window


# ---------------------------------------------------------------- dataset kind


@pytest.mark.parametrize("fmt", ["png", "dicom"])
def test_datasets_nodule_writes_boxes_json_the_export_reads(tmp_path, fmt):
    from export.datasets import load_validation

    out = tmp_path / fmt
    assert datasets.main(["nodule", "--out", str(out), "--n", "4", "--seed", "3", "--format", fmt]) == 0
    ext = "png" if fmt == "png" else "dcm"
    names = [f"nodule_{i:05d}.{ext}" for i in range(4)]
    boxes = json.loads((out / "boxes.json").read_text())
    assert sorted(boxes) == names
    assert [len(boxes[n]) for n in names] == [0, 1, 2, 3]  # index % 4 nodules
    for i, name in enumerate(names):
        s = datasets.nodule_sample(3, i)  # sample i depends only on (seed, i)
        assert boxes[name] == [[*(round(v, 2) for v in n.box), "nodule"] for n in s.phantom.nodules]
    if fmt == "dicom":
        ds = pydicom.dcmread(out / names[1])
        assert ds.SOPClassUID == CR_IMAGE_STORAGE and ds.Modality == "CR"
    # the export toolchain's own reader: boxes in model space, through the device's preprocessing
    meta = _meta()
    pre = Preprocessor(PreprocessSpec.from_dict(meta["preprocess"]))
    vs = load_validation(out, "detect", pre, tuple(meta["labels"]))
    assert [s.file for s in vs.samples] == names
    for s, truth, name in zip(vs.samples, vs.truth, names, strict=True):
        want = np.array([b[:4] for b in boxes[name]], np.float64).reshape(-1, 4) * 224 / 512  # 512 px -> 224 px
        assert truth.shape == (len(boxes[name]), 5) and (truth[:, 4] == 0).all()
        assert np.abs(truth[:, :4] - want).max(initial=0) < 0.01
        assert s.tensor.shape == (1, 1, 224, 224)


def test_datasets_nodule_is_prefix_stable(tmp_path):
    datasets.main(["nodule", "--out", str(tmp_path / "a"), "--n", "3", "--seed", "9"])
    datasets.main(["nodule", "--out", str(tmp_path / "b"), "--n", "2", "--seed", "9"])
    for name in ("nodule_00000.png", "nodule_00001.png"):
        assert sha256(tmp_path / "a" / name) == sha256(tmp_path / "b" / name), name
    a, b = (json.loads((tmp_path / x / "boxes.json").read_text()) for x in "ab")
    assert {k: a[k] for k in b} == b


# ---------------------------------------------------------------- committed model and bundle


def test_committed_onnx_matches_model_yaml():
    meta = _meta()
    assert meta["name"] == "cxr-nodule" and meta["task"] == "detect" and meta["labels"] == ["nodule"]
    assert {"box_format", "nms_iou", "max_detections"} <= set(meta["postprocess"])
    assert set(meta.get("codes", {})) <= set(meta["labels"])
    lo, hi = meta["review_band"]
    assert lo < meta["threshold"] < hi
    assert set(meta["intended_use"]["modalities"]) == {"CR", "DX"} and meta["intended_use"]["body_parts"] == ["CHEST"]
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), so, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == [o["name"] for o in meta["outputs"]] == ["boxes", "scores"]
    boxes, scores = sess.run(None, {"input": np.zeros(spec.input_shape, np.float32)})
    assert boxes.shape[0] == 1 and boxes.shape[2] == 4 and scores.shape == (1, boxes.shape[1], 1)
    for name in ("MODEL_CARD.md", "model.yaml"):
        assert "NOT FOR CLINICAL USE" in (MODEL_DIR / name).read_text()


def test_committed_bundle_loads_signed_and_int8_passed_the_gate():
    b = load_bundle(BUNDLE, KEYS, require_signature=True)
    cfg = b.manifest.task_config()
    assert cfg.task == "detect" and tuple(cfg.labels) == ("nodule",)
    assert "int8" in b.manifest.variants
    report = json.loads((BUNDLE / "report.json").read_text())
    gate = report["gate"]
    assert gate["passed"] is True and gate["primary_metric"] == "recall" and gate["reference"] == "labels"
    assert gate["runtimes"]["onnxruntime"]["passed"] is True


def _replay(name: str) -> tuple[int, list[dict]]:
    lines: list[str] = []
    rc = replay_file(SAMPLES / name, BUNDLE, realtime=False, as_json=True, trusted_keys=KEYS, echo=lines.append)
    return rc, [json.loads(ln)["finding"] for ln in lines if ln.startswith("{") and '"finding"' in ln]


def test_bundle_finds_the_sample_nodules_and_nothing_on_the_normal_radiograph():
    """The signed INT8 bundle through `medge replay`'s pipeline (DICOM decoder, intended use, preprocessing,
    ONNX Runtime, detect post-processing): every nodule of the sample is boxed (IoU >= 0.3 in frame pixels)."""
    truth = json.loads((SAMPLES / "truth.json").read_text())["cxr_nodule.dcm"]
    rc, findings = _replay("cxr_nodule.dcm")
    assert rc == 0
    (f,) = findings
    assert f["label"] == "nodule" and f["model"]["variant"] == "int8" and f["model"]["name"] == "cxr-nodule"
    got = np.array([b[:4] for b in f["geometry"]["boxes"] if b[4] >= _meta()["threshold"]], np.float64).reshape(-1, 4)
    want = np.array([b[:4] for b in truth["boxes"]], np.float64)
    assert 1 <= len(want) <= 2 and f["geometry"]["frame_size"] == truth["size"]
    iou = box_iou(want, got)
    assert (iou.max(axis=1) >= 0.3).all(), iou
    assert len(got) == len(want)  # no extra box above the threshold
    rc, findings = _replay("cxr_normal.dcm")
    assert rc == 0 and findings == []


def test_sample_decodes_to_the_phantom_and_carries_the_promised_tags():
    from edge.imaging.dicom import decode_file

    ds = pydicom.dcmread(SAMPLES / "cxr_nodule.dcm")
    truth = json.loads((SAMPLES / "truth.json").read_text())["cxr_nodule.dcm"]
    assert ds.SOPClassUID == CR_IMAGE_STORAGE and ds.Modality == "CR" and ds.BitsStored == 12
    assert "SYNTHETIC" in str(ds.PatientName) and str(ds.PatientID).startswith("FAKE")
    assert [ds.Rows, ds.Columns] == truth["size"] and ds.PhotometricInterpretation == truth["photometric"]
    p = make_samples.nodule_phantom()
    (frame,) = decode_file(SAMPLES / "cxr_nodule.dcm")
    assert np.abs(frame.pixels.astype(np.float32) - synth_xray.phantom_display(p)).max() < 1e-5
    assert truth["boxes"] == datasets.nodule_boxes(p, 1)


def test_train_nodule_smoke(tmp_path):
    from models import train_cxr_nodule

    spec_before = (MODEL_DIR / "model.yaml").read_bytes()
    assert train_cxr_nodule.main(["--steps", "2", "--n-train", "4", "--n-val", "4", "--n-eval", "4", "--batch", "2",
                                  "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["export"]["ort_vs_torch_max_abs"] < 1e-3 and m["held_out"]["images"] == 4
    assert "NOT FOR CLINICAL USE" in (tmp_path / "MODEL_CARD.md").read_text()
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert tuple(sess.get_inputs()[0].shape) == (1, 1, 224, 224)
    assert (MODEL_DIR / "model.yaml").read_bytes() == spec_before  # a scratch run leaves the committed spec alone


def test_model_sees_the_same_tensor_from_png_and_dicom(tmp_path):
    """The dataset's two formats reach the model as the same tensor (what calibration and the device read)."""
    from export.datasets import load_samples

    datasets.main(["nodule", "--out", str(tmp_path / "p"), "--n", "2", "--seed", "4"])
    datasets.main(["nodule", "--out", str(tmp_path / "d"), "--n", "2", "--seed", "4", "--format", "dicom"])
    pre = Preprocessor(PreprocessSpec.from_dict(_meta()["preprocess"]))
    a, b = (load_samples(tmp_path / x, pre, "calibration") for x in "pd")
    for sa, sb in zip(a, b, strict=True):
        assert np.abs(sa.tensor - sb.tensor).max() < 1e-3
    direct, _ = pre.apply(Frame(pixels=datasets.nodule_sample(4, 1).pixels, modality="CR", source="t"))
    assert np.abs(direct - a[1].tensor).max() < 1e-3
