"""Reference models: generators do what they claim, samples carry the promised tags, the committed ONNX
files load with the input shape their model.yaml implies and still score on fresh data through the
device's preprocessing, and both training scripts still run end to end."""

import csv
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pydicom
import pytest
import yaml
from pydicom.pixels import apply_voi_lut

from edge.frames import Frame
from edge.inference.intended_use import IntendedUse
from edge.inference.preprocess import Preprocessor, PreprocessSpec
from models import datasets, make_samples, synth_ultrasound, synth_xray
from models.synth_dicom import CR_IMAGE_STORAGE, US_MULTIFRAME_STORAGE, cr_dataset
from tests.support import ROOT  # noqa: E402
from tests.support.files import sha256

MODELS = ROOT / "models"
SAMPLES = MODELS / "samples"
MODEL_DIRS = {"us-free-fluid": MODELS / "us_free_fluid", "cxr-opacity": MODELS / "cxr_opacity"}


def _meta(name):
    return yaml.safe_load((MODEL_DIRS[name] / "model.yaml").read_text())


def _session(name):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(MODEL_DIRS[name] / "model.onnx"), so, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- generators


def test_ultrasound_frame_is_deterministic_and_mask_marks_dark_pockets():
    a = synth_ultrasound.make_frame(3, n_pockets=2)
    b = synth_ultrasound.make_frame(3, n_pockets=2)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2], strict=True)) and a[2] == b[2]
    assert not np.array_equal(a[0], synth_ultrasound.make_frame(4, n_pockets=2)[0])
    img, mask, region = a
    assert img.dtype == np.uint8 and mask.dtype == np.uint8 and img.shape == mask.shape == (256, 256)
    assert set(np.unique(mask)) == {0, 1}
    sector = synth_ultrasound.random_scene(np.random.default_rng(3)).sector  # the scene make_frame(3) drew
    ys, xs = np.nonzero(sector)
    assert (region.x0, region.y0, region.x1, region.y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert mask[~sector].sum() == 0 and img[~sector & (img > 0)].size > 0  # fluid only in the fan, text outside it
    # the pockets are dark, the tissue around them is not
    core = cv2.erode(mask, np.ones((5, 5), np.uint8))
    ring = cv2.dilate(mask, np.ones((15, 15), np.uint8)) - cv2.dilate(mask, np.ones((5, 5), np.uint8))
    assert core.sum() > 100 and ring.sum() > 100
    assert np.median(img[core > 0]) < 40 < 100 < np.median(img[ring > 0])
    # mask lies inside the sector bbox; burned-in text exists outside the bbox
    inside = np.zeros_like(mask)
    inside[region.y0 : region.y1, region.x0 : region.x1] = 1
    assert mask[inside == 0].sum() == 0
    assert (img[inside == 0] > 150).sum() > 50


def test_ultrasound_frames_without_fluid_have_empty_masks_and_no_dark_holes():
    img, mask, region = synth_ultrasound.make_frame(9, n_pockets=0)
    assert mask.sum() == 0
    fan = img[region.y0 + 40 : region.y1 - 40, (region.x0 + region.x1) // 2 - 20 : (region.x0 + region.x1) // 2 + 20]
    assert np.median(fan) > 80


def test_cine_fluid_appears_mid_cine_then_goes_away_and_speckle_is_persistent():
    c = synth_ultrasound.make_cine(5, n_frames=30, n_pockets=1, schedule=(0.3, 0.7))
    area = c.masks.reshape(30, -1).sum(1)
    assert area[:5].sum() == 0 and area[-5:].sum() == 0 and area[12:18].min() > 200
    # a pocket moves smoothly: consecutive mid-cine masks overlap strongly
    m1, m2 = c.masks[14] > 0, c.masks[15] > 0
    assert (m1 & m2).sum() / (m1 | m2).sum() > 0.7
    # consecutive frames are correlated (persistent speckle) but not identical
    f0, f1, f9 = (c.frames[i].astype(float)[c.frames[0] > 0] for i in (0, 1, 9))
    assert not np.array_equal(c.frames[0], c.frames[1])
    assert np.corrcoef(f0, f1)[0, 1] > 0.6 and np.corrcoef(f0, f1)[0, 1] > np.corrcoef(f0, f9)[0, 1]


def test_xray_phantom_is_deterministic_photometrics_agree_and_opacity_adds_density():
    pos = synth_xray.make_phantom(21, size=256, opacity=True)
    again = synth_xray.make_phantom(21, size=256, opacity=True)
    assert np.array_equal(pos.stored, again.stored) and pos.stored.dtype == np.uint16
    assert pos.stored.max() <= synth_xray.MAX_STORED and pos.label == 1
    m1 = synth_xray.make_phantom(21, size=256, opacity=True, photometric="MONOCHROME1")
    assert np.corrcoef(m1.stored.ravel(), pos.stored.ravel())[0, 1] < -0.99  # inverted stored values ...
    assert np.allclose(synth_xray.phantom_display(m1), synth_xray.phantom_display(pos), atol=1e-6)  # ... same display
    neg = synth_xray.make_phantom(21, size=256, opacity=False)  # same anatomy, no opacity
    assert neg.label == 0 and neg.opacity is None
    o = pos.opacity
    yy, xx = np.mgrid[0:256, 0:256]
    disk = (xx - o.cx) ** 2 + (yy - o.cy) ** 2 < (0.5 * o.radius) ** 2
    gain = pos.stored[disk].astype(float).mean() - neg.stored[disk].astype(float).mean()
    assert gain > 40  # stored units (MONOCHROME2: denser = higher)


def test_training_windowing_matches_the_dicom_standard_voi():
    for pi in ("MONOCHROME1", "MONOCHROME2"):
        p = synth_xray.make_phantom(8, size=128, opacity=True, photometric=pi)
        ds = cr_dataset(p, key="t")
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(ds)))
        voi = apply_voi_lut(ds.pixel_array, ds).astype(np.float64) / synth_xray.MAX_STORED
        if pi == "MONOCHROME1":
            voi = 1.0 - voi
        assert np.abs(voi - synth_xray.phantom_display(p)).max() < 1e-5


def _bytes(ds):
    from io import BytesIO

    bio = BytesIO()
    ds.save_as(bio, enforce_file_format=True)
    return bio.getvalue()


# ---------------------------------------------------------------- datasets CLI


def test_datasets_us_writes_pngs_and_same_named_masks_and_is_prefix_stable(tmp_path):
    assert datasets.main(["us", "--out", str(tmp_path / "a"), "--n", "4", "--seed", "5"]) == 0
    datasets.main(["us", "--out", str(tmp_path / "b"), "--n", "2", "--seed", "5"])
    imgs = sorted(p.name for p in (tmp_path / "a").glob("*.png"))
    assert imgs == [f"us_{i:05d}.png" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "a" / "masks").glob("*.png")) == imgs
    for name in imgs[:2]:
        assert sha256(tmp_path / "a" / name) == sha256(tmp_path / "b" / name), name
    img = cv2.imread(str(tmp_path / "a" / imgs[0]), cv2.IMREAD_UNCHANGED)
    s = datasets.us_sample(5, 0)
    assert img.dtype == np.uint8 and np.array_equal(img, s.pixels)
    mask = cv2.imread(str(tmp_path / "a" / "masks" / imgs[0]), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(mask > 0, s.mask > 0)
    assert not list(tmp_path.rglob("*.tmp"))


def test_datasets_cxr_png_and_dicom(tmp_path):
    datasets.main(["cxr", "--out", str(tmp_path / "p"), "--n", "4", "--seed", "2"])
    rows = list(csv.reader((tmp_path / "p" / "labels.csv").open()))
    assert rows[0] == ["file", "label"] and [r[1] for r in rows[1:]] == ["0", "1", "0", "1"]
    png = tmp_path / "p" / rows[2][0]
    disp = datasets.read_display_png(png)
    assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert np.abs(disp - datasets.cxr_sample(2, 1).pixels).max() <= 0.5 / 65535 + 1e-7

    datasets.main(["cxr", "--out", str(tmp_path / "d"), "--n", "4", "--seed", "2", "--format", "dicom"])
    rows = list(csv.reader((tmp_path / "d" / "labels.csv").open()))
    pis = set()
    for name, _ in rows[1:]:
        ds = pydicom.dcmread(tmp_path / "d" / name)
        assert ds.SOPClassUID == CR_IMAGE_STORAGE and ds.Modality == "CR" and ds.BitsStored == 12
        assert len(ds.ImagerPixelSpacing) == 2 and float(ds.WindowWidth) > 0
        pis.add(ds.PhotometricInterpretation)
    assert pis == {"MONOCHROME1", "MONOCHROME2"}
    with pytest.raises(SystemExit):
        datasets.main(["us", "--out", str(tmp_path / "x"), "--format", "dicom"])


# ---------------------------------------------------------------- samples


def test_sample_dicoms_have_the_promised_tags():
    truth = json.loads((SAMPLES / "truth.json").read_text())
    assert sum(p.stat().st_size for p in SAMPLES.iterdir()) < 3 * 1024 * 1024
    ds = pydicom.dcmread(SAMPLES / "us_cine.dcm")
    assert ds.SOPClassUID == US_MULTIFRAME_STORAGE and ds.Modality == "US"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
    assert int(ds.NumberOfFrames) == 60 and 20 <= int(ds.CineRate) <= 30 and float(ds.FrameTime) == pytest.approx(40.0)
    assert "SYNTHETIC" in str(ds.PatientName) and str(ds.PatientID).startswith("FAKE")
    reg = ds.SequenceOfUltrasoundRegions[0]
    assert reg.PhysicalUnitsXDirection == 3 and 0.01 < reg.PhysicalDeltaX < 0.2
    t = truth["us_cine.dcm"]
    assert [reg.RegionLocationMinX0, reg.RegionLocationMinY0, reg.RegionLocationMaxX1 + 1, reg.RegionLocationMaxY1 + 1] == t["region"]
    frames = ds.pixel_array
    assert frames.shape == (60, 256, 256)
    first, last = t["fluid_frames"]
    assert 5 < first < last < 55  # fluid appears mid-cine and is gone before the end
    # the truth file's fluid really is dark in the decoded frames
    cine = synth_ultrasound.make_cine(make_samples.US_SEED, n_frames=60, n_pockets=1, schedule=make_samples.US_SCHEDULE)
    assert np.array_equal(frames, cine.frames)
    mid = (first + last) // 2
    assert np.median(frames[mid][cv2.erode(cine.masks[mid], np.ones((5, 5), np.uint8)) > 0]) < 40

    pis = set()
    for name, label in (("cxr_opacity.dcm", 1), ("cxr_normal.dcm", 0)):
        ds = pydicom.dcmread(SAMPLES / name)
        assert ds.SOPClassUID == CR_IMAGE_STORAGE and (ds.Rows, ds.Columns) == (512, 512)
        assert ds.BitsAllocated == 16 and ds.pixel_array.dtype == np.uint16
        assert len(ds.ImagerPixelSpacing) == 2 and float(ds.WindowWidth) > 0
        assert "SYNTHETIC" in str(ds.PatientName) and truth[name]["label"] == label
        pis.add(ds.PhotometricInterpretation)
    assert pis == {"MONOCHROME1", "MONOCHROME2"}


def test_us_cine_jpeg_baseline_encoding_decodes(tmp_path):
    from models.atomic import write_dicom
    from models.synth_dicom import us_multiframe_dataset

    c = synth_ultrasound.make_cine(2, n_frames=4, n_pockets=1)
    write_dicom(tmp_path / "j.dcm", us_multiframe_dataset(c.frames, c.region, c.spacing_mm, 30.0, key="j", compression="jpeg"))
    ds = pydicom.dcmread(tmp_path / "j.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit and ds.LossyImageCompression == "01"
    px = ds.pixel_array
    assert px.shape == c.frames.shape and np.abs(px.astype(int) - c.frames).mean() < 6


def test_make_samples_regenerates_identical_bytes(tmp_path):
    make_samples.make_samples(tmp_path)
    assert {p.name: sha256(p) for p in tmp_path.iterdir()} == {p.name: sha256(p) for p in SAMPLES.iterdir()}


# ---------------------------------------------------------------- committed models


@pytest.mark.parametrize("name", sorted(MODEL_DIRS))
def test_committed_onnx_matches_model_yaml(name):
    meta = _meta(name)
    assert meta["name"] == name
    assert set(meta) == {"name", "version", "task", "description", "labels", "threshold", "review_band", "urgent_labels",
                         "input", "outputs", "preprocess", "postprocess", "intended_use"} - {"codes"} | {"codes"} & set(meta)
    assert IntendedUse.from_dict(meta["intended_use"], name).modalities  # every reference model says what it reads
    lo, hi = meta["review_band"]
    assert lo < meta["threshold"] < hi
    spec = PreprocessSpec.from_dict(meta["preprocess"])
    path = MODEL_DIRS[name] / "model.onnx"
    assert path.stat().st_size <= 4 * 1024 * 1024
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    sess = _session(name)
    (inp,) = sess.get_inputs()
    assert inp.name == meta["input"]["name"] == "input" and tuple(inp.shape) == spec.input_shape
    assert [o.name for o in sess.get_outputs()] == [o["name"] for o in meta["outputs"]] == ["logits"]
    out = sess.run(["logits"], {"input": np.zeros(spec.input_shape, np.float32)})[0]
    expect = (1, 1, *spec.size) if meta["task"] == "segment" else (1, 1)
    assert out.shape == expect
    assert (MODEL_DIRS[name] / "MODEL_CARD.md").read_text().count("NOT FOR CLINICAL USE") >= 1


def test_us_model_still_segments_fresh_frames():
    meta = _meta("us-free-fluid")
    pre, sess = Preprocessor(PreprocessSpec.from_dict(meta["preprocess"])), _session("us-free-fluid")
    inter = total = 0
    for i in range(20):
        s = datasets.us_sample(424_242, i)
        x, geom = pre.apply(Frame(pixels=s.pixels, modality="US", source="t", region=s.region))
        pred = geom.mask_to_frame((sess.run(["logits"], {"input": x})[0][0, 0] > 0).astype(np.uint8)) > 0
        inter += int((pred & (s.mask > 0)).sum())
        total += int(pred.sum() + s.mask.sum())
    assert 2 * inter / total > 0.7


def test_cxr_model_still_ranks_fresh_images():
    from models.train_cxr_opacity import auroc

    meta = _meta("cxr-opacity")
    pre, sess = Preprocessor(PreprocessSpec.from_dict(meta["preprocess"])), _session("cxr-opacity")
    scores, labels = [], []
    for i in range(60):
        s = datasets.cxr_sample(434_343, i)
        x, _ = pre.apply(Frame(pixels=s.pixels, modality="CR", source="t"))
        scores.append(float(sess.run(["logits"], {"input": x})[0].ravel()[0]))
        labels.append(s.label)
    assert auroc(np.array(scores), np.array(labels)) > 0.85


# ---------------------------------------------------------------- training scripts (smoke)


def test_train_us_smoke(tmp_path):
    from models import train_us_free_fluid

    args = ["--steps", "2", "--n-train", "4", "--n-eval", "3", "--batch", "2"]
    assert train_us_free_fluid.main([*args, "--out", str(tmp_path)]) == 0
    assert train_us_free_fluid.main([*args, "--out", str(tmp_path / "again")]) == 0
    assert sha256(tmp_path / "model.onnx") == sha256(tmp_path / "again" / "model.onnx")  # seeded
    assert "NOT FOR CLINICAL USE" in (tmp_path / "MODEL_CARD.md").read_text()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["export"]["ort_vs_torch_max_abs"] < 1e-3 and m["held_out"]["frames"] == 3
    assert tuple(_session_at(tmp_path).get_inputs()[0].shape) == (1, 1, 128, 128)


def test_train_cxr_smoke(tmp_path):
    from models import train_cxr_opacity

    assert train_cxr_opacity.main(["--steps", "2", "--n-train", "4", "--n-eval", "4", "--batch", "2",
                                   "--out", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["export"]["ort_vs_torch_max_abs"] < 1e-3 and m["held_out"]["images"] == 4
    assert tuple(_session_at(tmp_path).get_inputs()[0].shape) == (1, 1, 224, 224)


def _session_at(folder):
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def test_device_decoder_sees_exactly_the_display_values_the_models_were_trained_on():
    from edge.imaging.dicom import decode_file

    for name, seed, op, pi in (("cxr_opacity.dcm", make_samples.CXR_OPACITY_SEED, True, "MONOCHROME1"),
                               ("cxr_normal.dcm", make_samples.CXR_NORMAL_SEED, False, "MONOCHROME2")):
        (frame,) = decode_file(SAMPLES / name)
        want = synth_xray.phantom_display(synth_xray.make_phantom(seed, size=512, opacity=op, photometric=pi))
        assert np.abs(frame.pixels.astype(np.float32) - want).max() < 1e-5
        assert frame.spacing_mm is not None
    frames = decode_file(SAMPLES / "us_cine.dcm")
    truth = json.loads((SAMPLES / "truth.json").read_text())["us_cine.dcm"]
    assert len(frames) == 60 and frames[0].frame_rate == pytest.approx(25.0)
    f = frames[30]
    assert [f.region.x0, f.region.y0, f.region.x1, f.region.y1] == truth["region"]
    assert f.spacing_mm == pytest.approx((truth["spacing_mm"], truth["spacing_mm"]))
    px = f.pixels if f.pixels.dtype == np.uint8 else np.round(f.pixels * 255).astype(np.uint8)
    cine = synth_ultrasound.make_cine(make_samples.US_SEED, n_frames=60, n_pockets=1, schedule=make_samples.US_SCHEDULE)
    assert np.array_equal(px, cine.frames[30])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's own deprecation notice
def test_readme_torch_export_recipe_gives_a_graph_the_export_accepts_without_a_spec(tmp_path):
    """models/README.md: the pinned torch exports with dynamo=False (no onnxscript), and that graph resolves
    into a complete spec from the graph alone."""
    import onnx
    import torch

    from export.quantize import io_spec
    from export.spec import SpecFlags, SpecResolver

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 1)).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(net, (torch.zeros(1, 1, 64, 64),), str(path), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    r = SpecResolver(path, m, None, SpecFlags(labels=["normal", "opacity"], preprocess={"mean": [0.5], "std": [0.25]}),
                     None, None)
    assert r.preprocess().size == (64, 64)
    spec = r.complete(m, io_spec(m)).spec
    assert spec["task"] == "classify" and spec["labels"] == ["normal", "opacity"]
    assert spec["outputs"] == [{"name": "logits", "activation": "sigmoid"}]
