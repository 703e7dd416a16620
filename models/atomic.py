"""Whole-file writes for generated data.

A dataset or sample folder is consumed by other tools (export calibration, the demo); a half-written
PNG or DICOM left by an interrupted run would be read as a corrupt input. Every file is therefore
written to a temporary name in the same folder, fsynced, then renamed over the final name.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.durable_files import write_atomic


def write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, data, make_parents=True)


def write_png(path: Path, image: np.ndarray) -> None:
    """Lossless PNG of a uint8 or uint16 grayscale image."""
    if image.dtype not in (np.uint8, np.uint16) or image.ndim != 2:
        raise ValueError(f"{path}: PNG writer takes HxW uint8/uint16, got {image.dtype} {image.shape}")
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{path}: PNG encoding failed")
    write_bytes(path, buf.tobytes())


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_dicom(path: Path, ds) -> None:
    """Serialize a pydicom Dataset (with file meta) atomically."""
    from io import BytesIO

    bio = BytesIO()
    ds.save_as(bio, enforce_file_format=True)
    write_bytes(path, bio.getvalue())
