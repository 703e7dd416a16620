"""Calibration and validation folders -> model-input tensors, through the device's own preprocessing.

INT8 ranges are only as good as the tensors they are measured on: if calibration images were resized,
windowed or normalised differently from what the device will feed the model, the ranges are wrong and
accuracy collapses silently on the device. So every image here becomes a `Frame` (display values, the
same reader the device uses for DICOM) and then a tensor via `edge.inference.preprocess.Preprocessor` built from
the exact `PreprocessSpec` that goes into the manifest. There is no other resize/normalise code.

Folder format: images ``*.png *.jpg *.jpeg *.dcm`` and videos ``*.mp4 *.avi`` (every k-th frame).
Validation labels: ``labels.csv`` (file,label) for classify; ``masks/<file name>.png`` for segment;
``boxes.json`` ({file: [[x0, y0, x1, y1, label], ...]}, image pixels) for detect.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError
from edge.frames import Frame
from edge.inference.preprocess import Geometry, Preprocessor

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".dcm")
VIDEO_EXTS = (".mp4", ".avi")
NEGATIVE_NAMES = ("0", "negative", "normal", "none", "background", "bg", "false", "no")


@dataclass
class Sample:
    """One preprocessed input: the tensor the model sees and how it maps back to the image."""

    key: str  # file name, plus "#frame" for video frames
    tensor: np.ndarray  # (1, C, H, W) float32
    geometry: Geometry


@dataclass
class ValidationSet:
    """Preprocessed validation inputs with their ground truth in model space."""

    task: str
    samples: list[Sample]
    labels: np.ndarray | None = None  # classify: (N,) int class index (binary: 0/1)
    masks: list[np.ndarray] = field(default_factory=list)  # segment: (H, W) bool, model space
    boxes: list[np.ndarray] = field(default_factory=list)  # detect: (M, 5) x0 y0 x1 y1 label, model space


def list_inputs(folder: Path, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS)
    if not files:
        raise InputError(f"{folder}: {what} folder has no images or videos ({', '.join(IMAGE_EXTS + VIDEO_EXTS)})")
    return files


def read_frames(path: Path, video_step: int = 10) -> Iterator[Frame]:
    """Frames of one calibration/validation file; raises InputError naming the file when unreadable."""
    ext = path.suffix.lower()
    if ext == ".dcm":
        from edge.imaging.dicom import frames_from_file  # the device's display chain: same values as on the device

        n = 0
        try:
            for i, fr in enumerate(frames_from_file(path, source="export")):
                if i % max(1, video_step) == 0:
                    n += 1
                    yield fr
        except InputError:
            raise
        except Exception as e:  # decoders raise many types for corrupt files
            raise InputError(f"{path}: unreadable DICOM ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]})") from None
        if n == 0:
            raise InputError(f"{path}: DICOM has no image frames")
        return
    if ext in VIDEO_EXTS:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise InputError(f"{path}: unreadable video (OpenCV could not open it)")
        i = n = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                if i % max(1, video_step) == 0:
                    n += 1
                    yield Frame(pixels=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), modality="US", source="export", index=i,
                                origin=path)
                i += 1
        finally:
            cap.release()
        if n == 0:
            raise InputError(f"{path}: video has no decodable frames")
        return
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"{path}: unreadable image (not a valid {ext[1:].upper()} file)")
    yield Frame(pixels=_display(img), modality="OT", source="export", origin=path)


def _display(img: np.ndarray) -> np.ndarray:
    """OpenCV image -> Frame pixels (RGB, uint8 or float32 0-1)."""
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.uint16:
        return (img.astype(np.float32) / 65535.0).astype(np.float32)
    v = img.astype(np.float32)
    lo, hi = float(v.min()), float(v.max())
    return ((v - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(v, np.float32)


def load_samples(folder: Path, pre: Preprocessor, what: str, video_step: int = 10,
                 progress: Callable[[int], None] | None = None) -> list[Sample]:
    samples = []
    for p in list_inputs(folder, what):
        frames = list(read_frames(p, video_step))
        for fr in frames:
            t, g = pre.apply(fr)
            key = p.name if len(frames) == 1 and p.suffix.lower() not in VIDEO_EXTS else f"{p.name}#{fr.index}"
            samples.append(Sample(key=key, tensor=t, geometry=g))
        if progress:
            progress(1)
    return samples


def _file_of(key: str) -> str:
    return key.split("#", 1)[0]


def _label_index(raw: str, labels: tuple[str, ...], where: str) -> int:
    raw = raw.strip()
    if len(labels) <= 1 or (len(labels) == 2 and labels[0].lower() in NEGATIVE_NAMES):
        if raw in ("0", "1"):
            return int(raw)
        if raw in labels:
            return 1 if raw == labels[-1] else 0
        if raw.lower() in NEGATIVE_NAMES:
            return 0
        raise InputError(f"{where}: label {raw!r} is neither 0/1 nor one of the model's labels {list(labels)}")
    if raw.isdigit() and int(raw) < len(labels):
        return int(raw)
    if raw in labels:
        return labels.index(raw)
    raise InputError(f"{where}: label {raw!r} is not one of the model's labels {list(labels)}")


def load_validation(folder: Path, task: str, pre: Preprocessor, labels: tuple[str, ...], video_step: int = 10,
                    progress: Callable[[int], None] | None = None) -> ValidationSet:
    folder = Path(folder)
    files = list_inputs(folder, "validation")
    if task == "classify":
        src = folder / "labels.csv"
        if not src.is_file():
            raise InputError(f"{src}: labels missing from the validation set (classify needs labels.csv with file,label)")
        table: dict[str, int] = {}
        with open(src, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or (i == 0 and row[0].strip().lower() == "file"):
                    continue
                if len(row) < 2:
                    raise InputError(f"{src}:{i + 1}: expected 'file,label'")
                table[row[0].strip()] = _label_index(row[1], labels, f"{src}:{i + 1}")
        missing = [p.name for p in files if p.name not in table]
        if missing:
            raise InputError(f"{src}: labels missing for {len(missing)} validation file(s), e.g. {missing[0]}")
    elif task == "segment":
        mdir = folder / "masks"
        missing = [p.name for p in files if not (mdir / (p.name + ".png")).is_file() and not (mdir / (p.stem + ".png")).is_file()]
        if missing:
            raise InputError(f"{mdir}: labels missing from the validation set: no mask for {len(missing)} file(s), "
                             f"e.g. masks/{missing[0]}.png")
    elif task == "detect":
        src = folder / "boxes.json"
        if not src.is_file():
            raise InputError(f"{src}: labels missing from the validation set (detect needs boxes.json)")
        try:
            boxes_json = json.loads(src.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{src}: not valid JSON ({e.msg} at line {e.lineno})") from None
        missing = [p.name for p in files if p.name not in boxes_json]
        if missing:
            raise InputError(f"{src}: labels missing for {len(missing)} validation file(s), e.g. {missing[0]}")
    else:
        raise InputError(f"task {task!r} is not one of classify, segment, detect")

    samples = load_samples(folder, pre, "validation", video_step, progress)
    vs = ValidationSet(task=task, samples=samples)
    if task == "classify":
        vs.labels = np.array([table[_file_of(s.key)] for s in samples], np.int64)
    elif task == "segment":
        for s in samples:
            name = _file_of(s.key)
            mp = mdir / (name + ".png")
            mp = mp if mp.is_file() else mdir / (Path(name).stem + ".png")
            m = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE)
            if m is None:
                raise InputError(f"{mp}: unreadable mask image")
            vs.masks.append(mask_to_model(m > 0, s.geometry))
    else:
        for s in samples:
            rows = boxes_json[_file_of(s.key)]
            vs.boxes.append(boxes_to_model(rows, s.geometry, labels, f"{src}[{_file_of(s.key)}]"))
    return vs


def mask_to_model(mask: np.ndarray, g: Geometry) -> np.ndarray:
    """Ground-truth mask (frame pixels) -> model space with the image's own crop/resize/letterbox."""
    if mask.shape[:2] != g.frame_size:
        raise InputError(f"mask size {mask.shape[:2]} differs from its image {g.frame_size}")
    roi = mask[g.roi.y0:g.roi.y1, g.roi.x0:g.roi.x1].astype(np.uint8)
    ch, cw = g.content_size
    roi = cv2.resize(roi, (cw, ch), interpolation=cv2.INTER_NEAREST)
    out = np.zeros(g.model_size, bool)
    out[g.pad_top:g.pad_top + ch, g.pad_left:g.pad_left + cw] = roi > 0
    return out


def boxes_to_model(rows: list, g: Geometry, labels: tuple[str, ...], where: str) -> np.ndarray:
    out = []
    for r in rows:
        if len(r) != 5:
            raise InputError(f"{where}: each box must be [x0, y0, x1, y1, label], got {r!r}")
        x0, y0, x1, y1 = (float(v) for v in r[:4])
        lab = r[4]
        li = labels.index(lab) if isinstance(lab, str) and lab in labels else int(lab) if str(lab).isdigit() else None
        if li is None:
            raise InputError(f"{where}: box label {lab!r} is not one of {list(labels)}")
        mx = lambda x: (x - g.roi.x0) * g.scale_x + g.pad_left  # noqa: E731
        my = lambda y: (y - g.roi.y0) * g.scale_y + g.pad_top  # noqa: E731
        out.append([mx(x0), my(y0), mx(x1), my(y1), li])
    return np.array(out, np.float32).reshape(-1, 5)


def calibration_summary(samples: list[Sample], min_samples: int = 32) -> tuple[dict, list[str]]:
    """Statistics of the calibration tensors and warnings when they cannot represent the device's input.

    Too few images give noisy ranges; near-identical images (one patient, one phantom, one frame of a
    still video) give ranges that clip anything else. Both are legal but must be said out loud.
    """
    n = len(samples)
    means = np.array([float(s.tensor.mean()) for s in samples])
    stds = np.array([float(s.tensor.std()) for s in samples])
    allv = np.concatenate([s.tensor.reshape(-1)[:: max(1, s.tensor.size // 4096)] for s in samples])
    lo, hi = float(np.percentile(allv, 0.1)), float(np.percentile(allv, 99.9))
    flat = np.stack([cv2.resize(s.tensor[0].mean(0), (16, 16), interpolation=cv2.INTER_AREA).reshape(-1)
                     for s in samples])
    diffs = np.abs(flat - flat.mean(0)).mean() / (np.abs(flat).mean() + 1e-6)
    warnings = []
    if n < min_samples:
        warnings.append(f"calibration set is small ({n} inputs; use at least {min_samples} representative images)")
    if n > 1 and diffs < 0.02:
        warnings.append(f"calibration set is too uniform (inputs differ by {diffs:.1%} on average; include varied "
                        "patients, devices and settings)")
    summary = {
        "inputs": n,
        "tensor_mean": round(float(means.mean()), 5),
        "tensor_std": round(float(stds.mean()), 5),
        "tensor_p001_p999": [round(lo, 5), round(hi, 5)],
        "mean_relative_difference": round(float(diffs), 5),
        "warnings": warnings,
    }
    return summary, warnings
