"""edge.imaging.dicom against pydicom's own display pipeline on every real CR/DX/US object in pydicom-data.

The reference here is computed per frame, on the full image, straight from pydicom's functions
(apply_modality_lut, apply_voi_lut, apply_color_lut, convert_color_space); edge.imaging.dicom instead evaluates
the chain once over the stored-value domain and gathers, and decodes JPEG cines with OpenCV, so the two
are independent paths that must agree.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space, pixel_array

from edge.errors import InputError
from edge.imaging.dicom import describe, frames_from_file, read_dicom
from tests.support.dicom_files import FILES, LUT_FILES, find

# not CR/DX/US, but the only real objects with a Modality LUT Sequence (signed 12 bit) and a VOI LUT Sequence


def _reference_display(ds, index: int, first: np.ndarray | None) -> np.ndarray:
    """Display values straight from pydicom, on the full frame."""
    pi = str(ds.PhotometricInterpretation).strip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pi in ("MONOCHROME1", "MONOCHROME2"):
            arr = pixel_array(ds, index=index)
            v = apply_voi_lut(apply_modality_lut(arr, ds), ds, prefer_lut=True).astype(np.float64)
            bits = int(ds.BitsStored)
            if "VOILUTSequence" in ds:  # black..white = 0..largest value the LUT's data bits can hold
                lut_max = int(np.max(ds.VOILUTSequence[0].LUTData))
                lo, hi = 0, 2 ** max(8, lut_max.bit_length()) - 1
            elif "WindowCenter" in ds or bits <= 8:
                lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
                if "RescaleSlope" in ds:
                    lo, hi = sorted((lo * float(ds.RescaleSlope) + float(ds.RescaleIntercept),
                                     hi * float(ds.RescaleSlope) + float(ds.RescaleIntercept)))
            else:  # no window: first frame's range after the modality LUT
                m = apply_modality_lut(first, ds)
                lo, hi = float(m.min()), float(m.max())
            out = np.clip((v - lo) / (hi - lo), 0, 1)
            return 1 - out if pi == "MONOCHROME1" else out
        if pi == "PALETTE COLOR":
            rgb = apply_color_lut(pixel_array(ds, index=index), ds)
            if rgb.dtype != np.uint8:
                rgb = rgb.astype(np.float64) * (255 / 65535) if rgb.max() > 255 else rgb
            return np.round(rgb).astype(np.uint8)
        if pi in ("YBR_FULL", "YBR_FULL_422"):
            return convert_color_space(pixel_array(ds, index=index, raw=True), pi, "RGB")
        return pixel_array(ds, index=index)  # RGB, and YBR_ICT/RCT which the J2K codec converts itself


@pytest.mark.parametrize("path", FILES + LUT_FILES, ids=[os.path.basename(f) for f in FILES + LUT_FILES])
def test_display_values_match_pydicom(path):
    ds = read_dicom(path)
    info = describe(ds, path)
    assert info.accepted, info.reason
    n = info.frames or 1
    check = {0, n - 1}
    frames = list(frames_from_file(path, "t"))
    assert len(frames) == n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = pixel_array(ds, index=0)
    lossy_jpeg = ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    for i in sorted(check):
        f = frames[i]
        ref = _reference_display(ds, i, first)
        assert f.pixels.shape == ref.shape
        assert f.index == i and f.live is False and f.frame_count == n
        if f.pixels.dtype == np.float32:
            assert float(f.pixels.min()) >= 0.0 and float(f.pixels.max()) <= 1.0
            np.testing.assert_allclose(f.pixels, ref, atol=1e-5)
        else:
            assert f.pixels.dtype == np.uint8
            diff = np.abs(f.pixels.astype(int) - ref.astype(int))
            if lossy_jpeg:  # libjpeg-turbo (cv2) vs libjpeg (pydicom): IDCT/upsampling rounding only
                assert diff.max() <= 8 and diff.mean() < 0.5, (diff.max(), diff.mean())
            else:
                assert diff.max() <= 1, diff.max()


def test_every_imaging_file_is_covered():
    if not FILES:
        pytest.skip("no CR/DX/US files found in pydicom / pydicom-data")
    vendors = {str(read_dicom(f).get("Manufacturer")) for f in FILES}
    assert len(FILES) >= 20 and len(vendors) >= 4, (len(FILES), vendors)


def test_monochrome1_is_inverted():
    p = find("RG3_UNCR.dcm")
    ds = read_dicom(p)
    (f,) = list(frames_from_file(p, "t"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = ds.pixel_array
    # MONOCHROME1: the highest stored value is displayed darkest
    assert f.pixels[np.unravel_index(raw.argmax(), raw.shape)] < f.pixels[np.unravel_index(raw.argmin(), raw.shape)]


def test_ultrasound_region_spacing_and_rate():
    p = find("color3d_jpeg_baseline.dcm")
    info = describe(read_dicom(p), p)
    assert info.frames == 120 and info.photometric == "YBR_FULL_422"
    assert info.region is not None and (info.region.x0, info.region.y0, info.region.x1, info.region.y1) == (84, 31, 596, 415)
    assert info.spacing_mm == pytest.approx((0.5104970559, 0.5104970559))  # PhysicalDeltaY/X in cm * 10
    assert info.spacing_source.startswith("SequenceOfUltrasoundRegions")
    assert info.frame_rate == pytest.approx(30.0, rel=1e-3) and info.frame_rate_source == "FrameTime"


def test_cr_spacing_from_imager_pixel_spacing_and_zero_spacing_is_absent():
    cr = [f for f in FILES if "dicomdirtests" in f]
    if not cr:
        pytest.skip("Agfa CR files from pydicom's dicomdirtests not present")
    info = describe(read_dicom(cr[0]), cr[0])
    assert info.spacing_mm == (0.1, 0.1) and info.spacing_source == "ImagerPixelSpacing"
    p = find("RG1_UNCR.dcm")  # real Philips CR with PixelSpacing "0.000\0.000"
    assert describe(read_dicom(p), p).spacing_mm is None


def test_study_ids_and_acquisition_time():
    p = find("examples_ybr_color.dcm")
    frames = list(frames_from_file(p, "t"))
    ds = read_dicom(p)
    assert frames[0].study.sop_instance_uid == ds.SOPInstanceUID
    assert frames[0].study.study_uid == ds.StudyInstanceUID
    assert frames[1].acquired_at - frames[0].acquired_at == pytest.approx(1 / 30.0, rel=1e-3)


def test_cine_frames_are_decoded_lazily():
    """Speed is measured by benchmarks/bench_decode.py; here only that frames come one at a time."""
    p = find("color3d_jpeg_baseline.dcm")
    it = frames_from_file(p, "t")
    first = next(it)
    assert first.index == 0 and first.frame_count == 120 and first.pixels.shape == (480, 640, 3)
    assert sum(1 for _ in it) == 119


# ------------------------------------------------------------------------------------------ refusals


def test_truncated_file_is_refused_with_one_line(tmp_path):
    for name in ("color3d_jpeg_baseline.dcm", "US1_UNCR.dcm"):
        src = find(name)
        b = src.read_bytes()
        bad = tmp_path / f"cut-{name}"
        bad.write_bytes(b[: len(b) * 2 // 3])
        with pytest.raises(InputError) as e:
            list(frames_from_file(bad, "t"))
        msg = str(e.value)
        assert "\n" not in msg and str(bad) in msg
        assert "truncated" in msg


def test_wrong_pixel_data_length(tmp_path):
    ds = read_dicom(find("US1_UNCR.dcm"))
    ds.Rows = ds.Rows + 10
    out = tmp_path / "long.dcm"
    ds.save_as(out)
    with pytest.raises(InputError, match="wrong pixel data length"):
        list(frames_from_file(out, "t"))


def test_non_image_and_unsupported_syntax(tmp_path):
    ds = read_dicom(find("US1_UNCR.dcm"))
    del ds.PixelData
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    ds.save_as(tmp_path / "sr.dcm")
    with pytest.raises(InputError, match="not an image: Enhanced SR"):
        list(frames_from_file(tmp_path / "sr.dcm", "t"))

    ds = read_dicom(find("US1_UNCR.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no pixel decoder
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(96)])
    ds.save_as(tmp_path / "mpeg.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="transfer syntax"):
        list(frames_from_file(tmp_path / "mpeg.dcm", "t"))

    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(InputError, match="not a DICOM file"):
        read_dicom(tmp_path / "text.dcm")


# ------------------------------------------------------------------------------------ medge inspect


def test_medge_inspect_json_and_refusal(tmp_path):
    import json

    from typer.testing import CliRunner

    from edge.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["inspect", "--json", str(find("color3d_jpeg_baseline.dcm"))])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["accepted"] is True and info["modality"] == "US" and info["frames"] == 120
    assert (info["rows"], info["columns"]) == (480, 640) and info["photometric"] == "YBR_FULL_422"
    assert info["frame_rate"] == pytest.approx(30.0, rel=1e-3) and info["spacing_mm"][0] == pytest.approx(0.5105, abs=1e-4)
    assert "PatientName" not in res.stdout and "PatientID" not in res.stdout

    b = find("RG1_J2KR.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(b[: len(b) // 2])
    res = runner.invoke(app, ["inspect", str(cut)])
    assert res.exit_code == 1
    assert res.stdout.splitlines()[0].startswith("cut.dcm: REFUSED (") and "truncated" in res.stdout.splitlines()[0]

    res = runner.invoke(app, ["inspect", str(tmp_path / "missing.dcm")])
    assert res.exit_code == 2 and "file not found" in res.output


def test_large_uncompressed_cine_is_read_frame_by_frame(tmp_path):
    import tracemalloc

    ds = read_dicom(find("US1_UNCR.dcm"))  # GE 480x640 RGB
    base = ds.pixel_array
    frames = np.stack([np.roll(base, 7 * i, axis=1) for i in range(16)])  # 14.7 MB of native pixel data
    ds.set_pixel_data(frames, "RGB", 8)
    ds.SOPClassUID = pydicom.uid.UltrasoundMultiFrameImageStorage
    ds.FrameTime = 40
    path = tmp_path / "cine.dcm"
    ds.save_as(path)
    tracemalloc.start()
    try:
        n = 0
        for f in frames_from_file(path, "t"):
            assert np.array_equal(f.pixels, frames[f.index])
            n += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 16 and f.frame_rate == pytest.approx(25.0)
    assert peak < 6e6, peak  # a few frames in memory, never the 14.7 MB object
    b = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(b[: len(b) - 500_000])
    with pytest.raises(InputError, match="wrong pixel data length"):
        list(frames_from_file(cut, "t"))
