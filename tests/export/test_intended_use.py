"""Export writes what the model is for (declared, or read off the calibration DICOMs) and the reference
statistics the device's drift monitor compares against."""

from __future__ import annotations

import pytest
import yaml

from edge.errors import InputError
from edge.inference.bundle import load_bundle
from export.make_bundle import ExportOptions, run_export
from models.datasets import write_cxr
from tests.support import ROOT
from tests.support.export_inputs import write_images

MODEL = ROOT / "models/cxr_opacity/model.onnx"


def _spec_without_intended_use(tmp_path):
    spec = yaml.safe_load((MODEL.parent / "model.yaml").read_text())
    del spec["intended_use"]
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.mark.slow
def test_intended_use_is_inferred_from_calibration_dicoms_printed_and_enforced_by_the_bundle(tmp_path):
    calib = write_cxr(tmp_path / "calib", 16, seed=4242, fmt="dicom", size=256)
    logged: list[str] = []
    res = run_export(ExportOptions(model=MODEL, calib=calib, val=None, out=tmp_path / "b", latency_runs=3,
                                   spec=_spec_without_intended_use(tmp_path)), log=logged.append)
    use = load_bundle(res.out).manifest.intended_use
    assert use.modalities == ("CR",) and use.colour == "grey"
    assert set(use.photometric) == {"MONOCHROME1", "MONOCHROME2"}  # the generator alternates them
    assert use.rows == (128, 512) and use.columns == (128, 512)  # 256 widened x2 either way
    lo, hi = use.pixel_spacing_mm
    assert 0 < lo < hi
    text = next(m for m in logged if m.startswith("intended use"))
    assert "modalities: ['CR']  (inferred from 16 calibration DICOM file(s))" in text
    spec = yaml.safe_load((res.out / "model_spec.yaml").read_text())
    assert spec["intended_use"]["modalities"] == ["CR"]  # the spec saved with the bundle reproduces it
    ref = load_bundle(res.out).manifest.reference
    assert ref.inputs == 16 and len(ref.intensity) == len(ref.intensity_edges) - 1
    assert ref.drift_psi >= 0.25 and ref.drift_psi_stream >= 0.25 and ref.ood_psi >= 0.5
    assert abs(sum(ref.intensity) - 1) < 1e-3 and abs(sum(ref.confidence) - 1) < 1e-3


def test_png_calibration_without_a_declared_modality_is_refused_in_one_line(tmp_path):
    write_images(tmp_path / "calib", 4, seed=1)
    with pytest.raises(InputError) as e:
        run_export(ExportOptions(model=MODEL, calib=tmp_path / "calib", val=None, out=tmp_path / "b",
                                 spec=_spec_without_intended_use(tmp_path)), log=lambda m: None)
    msg = str(e.value)
    assert "cannot tell which modalities the model is for" in msg and "--modality CR,DX" in msg and "\n" not in msg
    assert not (tmp_path / "b").exists()


def test_a_declared_intended_use_with_a_typo_is_refused(tmp_path):
    spec = yaml.safe_load((MODEL.parent / "model.yaml").read_text())
    spec["intended_use"]["bodyparts"] = ["CHEST"]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    write_images(tmp_path / "calib", 4, seed=1)
    with pytest.raises(InputError, match="intended_use: unknown key"):
        run_export(ExportOptions(model=MODEL, calib=tmp_path / "calib", val=None, out=tmp_path / "b",
                                 spec=tmp_path / "spec.yaml"), log=lambda m: None)
