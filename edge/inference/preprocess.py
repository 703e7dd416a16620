"""The one preprocessing code path.

Calibration (export), validation (export's accuracy gate) and the device all call `Preprocessor.apply`
with the `PreprocessSpec` stored in the bundle manifest. A mismatch between the preprocessing a model was
calibrated with and the one it runs with is the classic silent INT8 failure, so there is deliberately no
second implementation anywhere, and the spec's hash is recorded in the manifest and checked at load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from edge.frames import Frame, Region

RESIZE_MODES = ("stretch", "letterbox")
ROI_MODES = ("full", "us_region")
COLOR_MODES = ("gray", "rgb")
INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


@dataclass(frozen=True)
class PreprocessSpec:
    """Declarative description of frame -> tensor, stored verbatim in the bundle manifest."""

    size: tuple[int, int] = field(metadata={"doc": "model input [height, width] in pixels"})
    color: str = field(default="gray", metadata={"doc": "gray: 1 channel; rgb: 3 channels (grey frames are repeated)"})
    resize: str = field(default="letterbox", metadata={
        "doc": "letterbox: keep the aspect ratio and pad; stretch: fill the input, distorting the aspect ratio"})
    roi: str = field(default="full", metadata={
        "doc": "full: the whole frame; us_region: crop to the ultrasound sector DICOM declares (else the whole frame)"})
    interpolation: str = field(default="area", metadata={
        "doc": "resampling when shrinking: area, linear or nearest (enlarging is always linear)"})
    window: tuple[float, float] | None = field(default=None, metadata={
        "doc": "optional [center, width] contrast window on 0..1 display values, applied after resizing"})
    mean: tuple[float, ...] = field(default=(0.0,), metadata={
        "doc": "subtracted per channel from 0..1 display values (1 value, or one per channel; ImageNet: "
               "[0.485, 0.456, 0.406])"})
    std: tuple[float, ...] = field(default=(1.0,), metadata={
        "doc": "then divided by, per channel (ImageNet: [0.229, 0.224, 0.225])"})
    pad_value: float = field(default=0.0, metadata={"doc": "0..1 display value of the letterbox padding"})
    layout: str = field(default="NCHW", metadata={"doc": "tensor layout; only NCHW"})

    def __post_init__(self) -> None:
        h, w = self.size
        if h <= 0 or w <= 0:
            raise ValueError(f"preprocess.size must be positive, got {self.size}")
        if self.color not in COLOR_MODES:
            raise ValueError(f"preprocess.color must be one of {COLOR_MODES}, got {self.color!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"preprocess.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.roi not in ROI_MODES:
            raise ValueError(f"preprocess.roi must be one of {ROI_MODES}, got {self.roi!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"preprocess.interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if self.layout != "NCHW":
            raise ValueError(f"preprocess.layout must be NCHW, got {self.layout!r}")
        if len(self.mean) not in (1, self.channels) or len(self.std) not in (1, self.channels):
            raise ValueError(f"preprocess.mean/std need 1 or {self.channels} values")
        if any(s <= 0 for s in self.std):
            raise ValueError("preprocess.std values must be > 0")
        if self.window is not None and self.window[1] <= 0:
            raise ValueError("preprocess.window width must be > 0")

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.channels, self.size[0], self.size[1])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["window"] = list(self.window) if self.window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocess key(s): {', '.join(sorted(unknown))}")
        if "size" not in d:
            raise ValueError("preprocess.size is required ([height, width])")
        kw = dict(d)
        kw["size"] = tuple(int(v) for v in d["size"])
        if len(kw["size"]) != 2:
            raise ValueError("preprocess.size must be [height, width]")
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        if kw.get("window") is not None:
            kw["window"] = tuple(float(v) for v in kw["window"])
        return cls(**kw)

    def sha256(self) -> str:
        """Hash of the canonical form; the manifest records it and the device checks it."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()


@dataclass(frozen=True)
class Geometry:
    """How model-input pixels map back onto the frame, so outputs can be measured in frame space.

    frame_x = roi.x0 + (model_x - pad_left) / scale_x, and likewise for y.
    """

    frame_size: tuple[int, int]  # (height, width) of the full frame
    roi: Region
    scale_y: float
    scale_x: float
    pad_top: int
    pad_left: int
    content_size: tuple[int, int]  # (height, width) of the resized content inside the model input
    model_size: tuple[int, int]

    def model_spacing_mm(self, frame_spacing: tuple[float, float] | None) -> tuple[float, float] | None:
        """Physical size of one model-input pixel, given the frame's pixel spacing."""
        if frame_spacing is None:
            return None
        return (frame_spacing[0] / self.scale_y, frame_spacing[1] / self.scale_x)

    def mask_to_frame(self, mask: np.ndarray) -> np.ndarray:
        """Resample a model-space mask (HxW) back onto the full frame (nearest neighbour)."""
        ch, cw = self.content_size
        content = mask[self.pad_top : self.pad_top + ch, self.pad_left : self.pad_left + cw]
        roi = cv2.resize(content.astype(np.uint8), (self.roi.width, self.roi.height),
                         interpolation=cv2.INTER_NEAREST)
        out = np.zeros(self.frame_size, dtype=np.uint8)
        out[self.roi.y0 : self.roi.y1, self.roi.x0 : self.roi.x1] = roi
        return out

    def map_to_frame(self, model_map: np.ndarray) -> np.ndarray:
        """Resample a model-space float map (HxW, e.g. an explanation heatmap) onto the full frame (bilinear;
        zero outside the region the model saw)."""
        ch, cw = self.content_size
        content = np.asarray(model_map, np.float32)[self.pad_top : self.pad_top + ch, self.pad_left : self.pad_left + cw]
        roi = cv2.resize(content, (self.roi.width, self.roi.height), interpolation=cv2.INTER_LINEAR)
        out = np.zeros(self.frame_size, dtype=np.float32)
        out[self.roi.y0 : self.roi.y1, self.roi.x0 : self.roi.x1] = roi
        return out

    def points_to_frame(self, xy: np.ndarray) -> np.ndarray:
        """Map Nx2 model-space (x, y) points to frame coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[:, 0] = self.roi.x0 + (xy[:, 0] - self.pad_left) / self.scale_x
        out[:, 1] = self.roi.y0 + (xy[:, 1] - self.pad_top) / self.scale_y
        return out

    def points_to_model(self, xy: np.ndarray) -> np.ndarray:
        """Map Nx2 frame (x, y) points into model space (the inverse of `points_to_frame`)."""
        xy = np.asarray(xy, dtype=np.float64)
        out = np.empty_like(xy)
        out[:, 0] = (xy[:, 0] - self.roi.x0) * self.scale_x + self.pad_left
        out[:, 1] = (xy[:, 1] - self.roi.y0) * self.scale_y + self.pad_top
        return out

    def mask_to_model(self, mask: np.ndarray) -> np.ndarray:
        """A frame-sized mask in model space with the frame's own crop/resize/letterbox (nearest neighbour)."""
        if mask.shape[:2] != self.frame_size:
            raise ValueError(f"mask size {mask.shape[:2]} differs from its image {self.frame_size}")
        roi = mask[self.roi.y0:self.roi.y1, self.roi.x0:self.roi.x1].astype(np.uint8)
        ch, cw = self.content_size
        roi = cv2.resize(roi, (cw, ch), interpolation=cv2.INTER_NEAREST)
        out = np.zeros(self.model_size, bool)
        out[self.pad_top:self.pad_top + ch, self.pad_left:self.pad_left + cw] = roi > 0
        return out

    def content(self, model_map: np.ndarray) -> np.ndarray:
        """The part of a model-space map that is image, not letterbox padding (a view)."""
        ch, cw = self.content_size
        return model_map[self.pad_top:self.pad_top + ch, self.pad_left:self.pad_left + cw]

    def content_to_model(self, content: np.ndarray) -> np.ndarray:
        """A content-sized map back into the full model input, padding zero."""
        out = np.zeros(self.model_size, content.dtype)
        self.content(out)[...] = content
        return out


class Preprocessor:
    """Turns a `Frame` into the model's input tensor according to a `PreprocessSpec`."""

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec
        c = spec.channels
        self._mean = np.asarray(spec.mean * (c if len(spec.mean) == 1 else 1), np.float32).reshape(c, 1, 1)
        self._inv_std = (1.0 / np.asarray(spec.std * (c if len(spec.std) == 1 else 1), np.float32)).reshape(
            c, 1, 1
        )
        self._interp = INTERPOLATIONS[spec.interpolation]

    def apply(self, frame: Frame) -> tuple[np.ndarray, Geometry]:
        return self.apply_pixels(frame.pixels, frame.region)

    def apply_pixels(self, pixels: np.ndarray, region: Region | None = None) -> tuple[np.ndarray, Geometry]:
        """Same as `apply` for bare display pixels (export's calibration readers use this)."""
        spec = self.spec
        fh, fw = pixels.shape[:2]
        roi = Region(0, 0, fw, fh)
        if spec.roi == "us_region" and region is not None:
            roi = Region(max(0, region.x0), max(0, region.y0), min(fw, region.x1), min(fh, region.y1))
            if roi.width <= 0 or roi.height <= 0:
                roi = Region(0, 0, fw, fh)
        img = pixels[roi.y0 : roi.y1, roi.x0 : roi.x1]
        # Work on the big frame in uint8 and convert to float as late as possible: a 640x480 RGB frame is
        # 0.9 MB in uint8 and 3.7 MB in float32, and on a 2-core device that memory traffic competes with
        # the model. RGB -> gray in uint8 is exact for grey pixels stored as RGB (R = G = B, the usual
        # ultrasound frame) and within about 0.5/255 for coloured ones. Resizing is linear, so the 0..1 scaling
        # happens after it, on the small image.
        unit_scale = 1.0 / 255.0 if img.dtype == np.uint8 else 1.0
        img = _convert_color(img, spec.color).astype(np.float32, copy=False)

        th, tw = spec.size
        rh, rw = img.shape[:2]
        if spec.resize == "stretch":
            ch, cw = th, tw
        else:
            s = min(th / rh, tw / rw)
            ch, cw = max(1, round(rh * s)), max(1, round(rw * s))
        interp = self._interp if (ch < rh or cw < rw) else cv2.INTER_LINEAR
        if (ch, cw) != (rh, rw):
            img = cv2.resize(img, (cw, ch), interpolation=interp)
        if unit_scale != 1.0:
            img = img * np.float32(unit_scale)
        if img.ndim == 2:
            img = img[:, :, None]
        pad_top, pad_left = (th - ch) // 2, (tw - cw) // 2
        if (ch, cw) != (th, tw):
            canvas = np.full((th, tw, img.shape[2]), spec.pad_value, np.float32)
            canvas[pad_top : pad_top + ch, pad_left : pad_left + cw] = img
            img = canvas
        if spec.window is not None:
            c, w = spec.window
            img = np.clip((img - (c - w / 2.0)) / w, 0.0, 1.0)
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        chw = (chw - self._mean) * self._inv_std
        geom = Geometry(
            frame_size=(fh, fw),
            roi=roi,
            scale_y=ch / rh,
            scale_x=cw / rw,
            pad_top=pad_top,
            pad_left=pad_left,
            content_size=(ch, cw),
            model_size=(th, tw),
        )
        return chw[None].astype(np.float32, copy=False), geom


def _convert_color(img: np.ndarray, color: str) -> np.ndarray:
    if color == "gray":
        if img.ndim == 3:
            return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        return img
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    return img
