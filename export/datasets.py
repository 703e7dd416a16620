"""Calibration and validation folders -> model-input tensors, through the device's own preprocessing.

INT8 ranges are only as good as the tensors they are measured on: if calibration images were resized,
windowed or normalised differently from what the device will feed the model, the ranges are wrong and
accuracy collapses silently on the device. So every image here becomes a `Frame` (display values, the
same reader the device uses for DICOM) and then a tensor via `edge.inference.preprocess.Preprocessor` built from
the exact `PreprocessSpec` that goes into the manifest. There is no other resize/normalise code.

Folder format: images ``*.png *.jpg *.jpeg *.dcm`` and videos ``*.mp4 *.avi`` (every k-th frame), at the
top level, or one folder down in a folder-per-class tree (``val/<label>/*.png``, calibration too); a
folder with ``labels.csv``, ``boxes.json`` or ``masks/`` is flat and its sub-folders are not read.
Validation labels are what each task kind reads (`edge.inference.tasks.TASK_KINDS`, ``truth``):
``labels.csv`` (file,label) or class folders for classify; ``masks/<file name>.png`` for segment;
``boxes.json`` ({file: [[x0, y0, x1, y1, label], ...]}, image pixels) for detect. A file is named by its
path inside the folder (``img001.png``, ``opacity/img001.png``).

Subgroups (any task): a validation folder may say who each file is from, so the gate can catch a drop that
the overall mean hides (one manufacturer, one site, one age band). Columns of ``labels.csv`` after
``file,label`` (which then needs its header row) and the columns of an optional ``subgroups.csv``
(header ``file,<column>,...``, one row per validation file, no row for a file that is not there) name
them; each column=value is one subgroup, an empty value leaves the file out of that column's subgroups,
and a column may not be in both files. Rows of ``labels.csv`` for absent files are ignored, as for its
labels.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.errors import InputError
from edge.frames import Frame
from edge.inference.bundle import sha256_file
from edge.inference.preprocess import Geometry, Preprocessor
from edge.inference.tasks import task_kind

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".dcm")
VIDEO_EXTS = (".mp4", ".avi")


@dataclass
class Sample:
    """One preprocessed input: the tensor the model sees and how it maps back to the image."""

    key: str  # path inside the folder, plus "#frame" for video frames
    tensor: np.ndarray  # (1, C, H, W) float32
    geometry: Geometry
    spacing_mm: tuple[float, float] | None = None  # the frame's pixel spacing (DICOM), as the device sees it

    @property
    def file(self) -> str:
        return self.key.split("#", 1)[0]


@dataclass
class ValidationSet:
    """Preprocessed validation inputs with their ground truth in model space (per sample, in the form the
    task kind's ``read_truth`` gives: a class index, a mask, an array of boxes)."""

    task: str
    samples: list[Sample]
    truth: list[Any] = field(default_factory=list)
    subgroups: dict[str, dict[str, str]] = field(default_factory=dict)  # file -> {column: value}

    def subgroup_members(self) -> dict[tuple[str, str], list[int]]:
        """(column, value) -> indices of its samples (every frame of a video is in its file's subgroups)."""
        out: dict[tuple[str, str], list[int]] = {}
        for i, s in enumerate(self.samples):
            for col, val in self.subgroups.get(s.file, {}).items():
                out.setdefault((col, val), []).append(i)
        return dict(sorted(out.items()))


LABEL_FILES = ("labels.csv", "boxes.json", "masks")  # a flat folder's labels: its sub-folders are not classes
SUBGROUPS_FILE = "subgroups.csv"  # optional, any task; not a label file, so class folders stay classes


def _is_input(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTS + VIDEO_EXTS and not p.name.startswith(".")


def list_inputs(folder: Path, what: str) -> list[Path]:
    """Inputs at the top level and one folder down (class folders), in a stable order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found")
    files = [p for p in folder.iterdir() if _is_input(p)]
    for sub in class_folders(folder):
        files += [p for p in (folder / sub).iterdir() if _is_input(p)]
    files.sort(key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise InputError(f"{folder}: {what} folder has no images or videos ({', '.join(IMAGE_EXTS + VIDEO_EXTS)}), "
                         "at the top level or in class folders")
    return files


def class_folders(folder: Path) -> list[str]:
    """Sub-folders holding inputs, sorted (torchvision's ImageFolder numbers classes in this order); none
    when the folder is a flat one with its own labels (an ``archive/`` beside ``labels.csv`` is no class)."""
    folder = Path(folder)
    if not folder.is_dir() or any((folder / name).exists() for name in LABEL_FILES):
        return []
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                  and any(_is_input(p) for p in d.iterdir()))


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
        from edge.imaging.video import read_video  # the device's video reader

        for i, pixels, _ in read_video(path, video_step):
            yield Frame(pixels=pixels, modality="US", source="export", index=i, origin=path)
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
        rel = p.relative_to(folder).as_posix()
        for fr in frames:
            t, g = pre.apply(fr)
            key = rel if len(frames) == 1 and p.suffix.lower() not in VIDEO_EXTS else f"{rel}#{fr.index}"
            samples.append(Sample(key=key, tensor=t, geometry=g, spacing_mm=fr.spacing_mm))
        if progress:
            progress(1)
    return samples


def load_validation(folder: Path, task: str, pre: Preprocessor, labels: tuple[str, ...], video_step: int = 10,
                    progress: Callable[[int], None] | None = None) -> ValidationSet:
    """Validation inputs and their ground truth, read by the task kind (checked before any image is read)."""
    folder = Path(folder)
    try:
        kind = task_kind(task).load()
    except ValueError as e:
        raise InputError(str(e)) from None
    files = list_inputs(folder, "validation")
    kind.check_truth(folder, files, labels)
    groups = read_subgroups(folder, files)
    samples = load_samples(folder, pre, "validation", video_step, progress)
    return ValidationSet(task=task, samples=samples, truth=kind.read_truth(folder, samples, labels), subgroups=groups)


def _csv_rows(src: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped cells) of every non-blank row."""
    try:
        with open(src, newline="") as f:
            rows = [(i + 1, [c.strip() for c in row]) for i, row in enumerate(csv.reader(f))]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{src}: unreadable CSV ({type(e).__name__}: {e})") from None
    return [(n, r) for n, r in rows if any(r)]


def read_subgroups(folder: Path, files: list[Path]) -> dict[str, dict[str, str]]:
    """File -> {column: value} from labels.csv's extra columns and subgroups.csv (module docstring), checked
    before any image is read so a typo costs seconds, not a whole export."""
    folder = Path(folder)
    names = {p.relative_to(folder).as_posix() for p in files}
    out: dict[str, dict[str, str]] = {}
    owner: dict[str, Path] = {}  # column -> the file that defines it
    for src, first, strict in ((folder / "labels.csv", 2, False), (folder / SUBGROUPS_FILE, 1, True)):
        if not src.is_file():
            continue
        rows = _csv_rows(src)
        has_header = bool(rows) and rows[0][1][0].lower() == "file"
        if not has_header:
            if strict:
                raise InputError(f"{src}:1: expected the header row 'file,<column>,...' naming the subgroup columns")
            if any(len(r) > first for _, r in rows):
                raise InputError(f"{src}:{rows[0][0]}: columns after file,label need a header row "
                                 "'file,label,<column>,...' naming the subgroups")
            continue
        (hline, header), body = rows[0], rows[1:]
        cols = header[first:]
        if strict and not cols:
            raise InputError(f"{src}:{hline}: no subgroup columns after 'file'")
        for c in cols:
            if not c:
                raise InputError(f"{src}:{hline}: a subgroup column has no name")
            if c in owner:
                raise InputError(f"{src}:{hline}: column {c!r} is also in {owner[c]}")
            owner[c] = src
        if not cols:
            continue
        listed: set[str] = set()
        for line, row in body:
            name = row[0]
            if len(row) != len(header):
                raise InputError(f"{src}:{line}: expected {len(header)} values ({','.join(header)}), got {len(row)}")
            if not name:
                raise InputError(f"{src}:{line}: no file name")
            if name not in names:
                if strict:
                    raise InputError(f"{src}:{line}: {name} is not a file of the validation folder")
                continue
            if name in listed:
                raise InputError(f"{src}:{line}: {name} is listed twice")
            listed.add(name)
            out.setdefault(name, {}).update({c: v for c, v in zip(cols, row[first:], strict=True) if v})
        missing = sorted(names - listed)
        if strict and missing:
            raise InputError(f"{src}: no row for {len(missing)} validation file(s), e.g. {missing[0]}")
    return out


def overlap_warnings(calib: Path, val: Path) -> list[str]:
    """Validation files that are also calibration files, by content: INT8's ranges were fitted to them, and a
    copied folder is how a model that was never checked on held-out labelled data slips through."""
    cal: dict[str, str] = {}
    for p in list_inputs(calib, "calibration"):
        cal.setdefault(sha256_file(p), p.relative_to(calib).as_posix())
    vals = list_inputs(val, "validation")
    both = [(p.relative_to(val).as_posix(), cal[h]) for p in vals if (h := sha256_file(p)) in cal]
    if not both:
        return []
    eg = ", ".join(v if v == c else f"{v} (calibration {c})" for v, c in both[:3])
    return [f"{len(both)} of {len(vals)} validation file(s) are also in the calibration set (same SHA-256), e.g. {eg}: "
            "the gate then measures on inputs the INT8 ranges were fitted to; validate on held-out images"]


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
