"""Real CR/DX/US objects from pydicom and pydicom-data (several vendors, every transfer syntax)."""

from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path

import pydicom
import pytest


def data_dirs() -> list[str]:
    dirs = []
    try:
        import data_store  # the pydicom-data package

        dirs.append(os.path.join(os.path.dirname(data_store.__file__), "data"))
    except ImportError:
        pass
    import pydicom.data

    dirs.append(os.path.join(os.path.dirname(pydicom.data.__file__), "test_files"))
    return dirs


def imaging_files() -> list[str]:
    out = []
    for d in data_dirs():
        for f in sorted(glob.glob(d + "/**/*", recursive=True)):
            if os.path.isdir(f) or f.endswith((".py", ".pyc", ".json", ".txt")):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(f, stop_before_pixels=True)
            except Exception:
                continue
            if ds.get("Modality") in ("CR", "DX", "US"):
                out.append(f)
    return out


FILES = imaging_files()


LUT_FILES = [str(p) for d in data_dirs() for p in Path(d).glob("*lut_*.dcm") if p.name in ("mlut_18.dcm", "vlut_04.dcm")]


def find(name: str) -> Path:
    for d in data_dirs():
        p = Path(d) / name
        if p.is_file():
            return p
    pytest.skip(f"{name} not in the installed pydicom / pydicom-data (machine is offline, no downloads)")
