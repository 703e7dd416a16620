"""The single preprocessing path: shapes, letterbox geometry, normalisation and the spec hash."""

import cv2
import numpy as np
import pytest

from edge.frames import Frame, Region
from edge.inference.preprocess import INTERPOLATIONS, Preprocessor, PreprocessSpec


def test_letterbox_geometry_round_trips_points_and_masks():
    spec = PreprocessSpec(size=(128, 128), resize="letterbox")
    img = np.zeros((200, 400), np.uint8)
    img[50:150, 100:200] = 255
    x, g = Preprocessor(spec).apply_pixels(img)
    assert x.shape == (1, 1, 128, 128) and x.dtype == np.float32
    assert g.content_size == (64, 128) and g.pad_top == 32 and g.pad_left == 0
    # the bright square lands where the geometry says it does
    ys, xs = np.nonzero(x[0, 0] > 0.5)
    back = g.points_to_frame(np.array([[xs.min(), ys.min()], [xs.max() + 1, ys.max() + 1]]))
    assert np.allclose(back, [[100, 50], [200, 150]], atol=4)
    mask = (x[0, 0] > 0.5).astype(np.uint8)
    full = g.mask_to_frame(mask)
    assert full.shape == (200, 400)
    inter = (full[50:150, 100:200] > 0).mean()
    assert inter > 0.9 and full.sum() < 1.2 * 100 * 100
    # one model pixel covers 200/64 frame rows and 400/128 frame columns
    assert g.model_spacing_mm((0.1, 0.1)) == pytest.approx((0.1 * 200 / 64, 0.1 * 400 / 128))


def test_model_spacing_scales_with_resize():
    spec = PreprocessSpec(size=(100, 100), resize="stretch")
    _, g = Preprocessor(spec).apply_pixels(np.zeros((400, 200), np.uint8))
    assert g.model_spacing_mm((0.2, 0.3)) == pytest.approx((0.8, 0.6))


def test_normalisation_and_uint8_float_equivalence():
    spec = PreprocessSpec(size=(8, 8), resize="stretch", mean=(0.5,), std=(0.25,))
    u8 = np.full((8, 8), 255, np.uint8)
    f32 = np.ones((8, 8), np.float32)
    a, _ = Preprocessor(spec).apply_pixels(u8)
    b, _ = Preprocessor(spec).apply_pixels(f32)
    assert np.allclose(a, 2.0) and np.allclose(a, b)


@pytest.mark.parametrize("interpolation", ["area", "linear", "nearest"])
def test_uint8_fast_path_matches_float_reference(interpolation):
    """The device converts to float late (after RGB->gray and resizing); that must stay the float result: exact
    for grey pixels stored as RGB, within about half a display level for coloured ones (OpenCV uses
    fixed-point weights)."""
    rng = np.random.default_rng(3)
    spec = PreprocessSpec(size=(96, 128), interpolation=interpolation, mean=(0.0,), std=(1.0,))
    grey = rng.integers(0, 256, (480, 640), dtype=np.uint8)
    colour = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for img, tol in ((np.stack([grey] * 3, -1), 1e-6), (colour, 0.6 / 255)):
        ref = cv2.cvtColor(img.astype(np.float32) / 255, cv2.COLOR_RGB2GRAY)
        ref = cv2.resize(ref, (128, 96), interpolation=INTERPOLATIONS[interpolation])
        got, _ = Preprocessor(spec).apply_pixels(img)
        assert np.abs(got[0, 0] - ref).max() <= tol


def test_rgb_to_gray_and_gray_to_rgb():
    rgb = np.zeros((10, 10, 3), np.uint8)
    rgb[..., 1] = 255
    g, _ = Preprocessor(PreprocessSpec(size=(10, 10), color="gray")).apply_pixels(rgb)
    assert g.shape == (1, 1, 10, 10) and np.allclose(g, 0.587, atol=0.01)
    c, _ = Preprocessor(PreprocessSpec(size=(10, 10), color="rgb", mean=(0, 0, 0), std=(1, 1, 1))).apply_pixels(
        np.full((10, 10), 128, np.uint8)
    )
    assert c.shape == (1, 3, 10, 10) and np.allclose(c[0, 0], c[0, 2])


def test_us_region_crop_uses_frame_region():
    img = np.zeros((100, 100), np.uint8)
    img[20:60, 30:90] = 200  # the "sector"
    img[0:10, 0:40] = 255  # burned-in text outside it
    f = Frame(pixels=img, modality="US", source="t", region=Region(30, 20, 90, 60))
    x, g = Preprocessor(PreprocessSpec(size=(40, 60), roi="us_region", resize="stretch")).apply(f)
    assert np.allclose(x, 200 / 255, atol=1e-3)
    assert g.roi == Region(30, 20, 90, 60)


def test_window_applies_after_resize():
    spec = PreprocessSpec(size=(4, 4), resize="stretch", window=(0.5, 0.5))
    x, _ = Preprocessor(spec).apply_pixels(np.array([[0.0, 0.25, 0.5, 1.0]] * 4, np.float32))
    assert np.allclose(x[0, 0, 0], [0.0, 0.0, 0.5, 1.0])


def test_spec_round_trip_and_hash_is_stable_and_sensitive():
    spec = PreprocessSpec(size=(128, 160), color="gray", resize="letterbox", mean=(0.2,), std=(0.3,))
    again = PreprocessSpec.from_dict(spec.to_dict())
    assert again == spec and again.sha256() == spec.sha256()
    other = PreprocessSpec.from_dict({**spec.to_dict(), "resize": "stretch"})
    assert other.sha256() != spec.sha256()


@pytest.mark.parametrize(
    "d, msg",
    [
        ({"size": [0, 10]}, "size must be positive"),
        ({"size": [10, 10], "color": "bgr"}, "color must be one of"),
        ({"size": [10, 10], "std": [0]}, "std values must be > 0"),
        ({"size": [10, 10], "colour": "rgb"}, "unknown preprocess key"),
        ({}, "preprocess.size is required"),
    ],
)
def test_bad_specs_refused(d, msg):
    with pytest.raises(ValueError, match=msg):
        PreprocessSpec.from_dict(d)


def test_frame_rejects_bad_pixels():
    with pytest.raises(ValueError):
        Frame(pixels=np.zeros((4, 4, 4), np.uint8), modality="US", source="t")
    with pytest.raises(ValueError):
        Frame(pixels=np.zeros((4, 4), np.int16), modality="CR", source="t")
