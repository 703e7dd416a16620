"""DICOM objects -> display-space `Frame`s, the way a diagnostic viewer would show them.

Models are trained and calibrated on what a radiologist sees, not on stored values, so every object goes
through the full display chain before preprocessing: Modality LUT (rescale or LUT sequence), VOI LUT or
window centre/width, MONOCHROME1 inversion, PALETTE COLOR lookup and YBR -> RGB. The chain is evaluated
once per object over every possible stored value and kept as a lookup table, so a frame of a cine costs
one gather, not a float pipeline; multi-frame objects are decoded lazily, one frame at a time.

Refusals (not an image, no decoder, wrong pixel data length, truncated file, a header `edge.imaging.dicom_guard`
refuses, declared sizes over the profile's limits) raise `InputError` with one line naming the file and
the cause, which sources log, count and quarantine. Any exception pydicom or a decoder raises on a
malformed object becomes such a line too: real-world bytes fail in ways no list of exception types covers.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, get_decoder, iter_pixels
from pydicom.uid import UID, JPEGBaseline8Bit

from edge.errors import InputError, one_line
from edge.frames import Acquisition, Frame, Region, StudyRef
from edge.imaging.dicom_guard import (
    DEFAULT_LIMITS,
    DecodeLimits,
    codestream_refusal,
    deflate_refusal,
    size_refusal,
    value_refusal,
)

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
YBR = ("YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_422", "YBR_PARTIAL_420")
SUPPORTED_PHOTOMETRIC = (*GRAYSCALE, "RGB", "PALETTE COLOR", *YBR)
US_UNIT_CM = 3  # PS3.3 C.8.5.5.1.15 Physical Units: 3 = cm
US_SPATIAL_2D = 1  # PS3.3 C.8.5.5.1.1 Region Spatial Format: 1 = 2D tissue or flow


@dataclass(frozen=True)
class DicomInfo:
    """What the daemon sees in one object, without decoding pixels (what `medge inspect` prints)."""

    path: str
    accepted: bool
    reason: str | None
    modality: str | None = None
    sop_class: str | None = None
    transfer_syntax: str | None = None
    photometric: str | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int | None = None
    samples_per_pixel: int | None = None
    bits_allocated: int | None = None
    bits_stored: int | None = None
    spacing_mm: tuple[float, float] | None = None
    spacing_source: str | None = None
    frame_rate: float | None = None
    frame_rate_source: str | None = None
    region: Region | None = None
    manufacturer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing_mm"] = list(self.spacing_mm) if self.spacing_mm else None
        return d


# ------------------------------------------------------------------------------------------- reading


DEFER_BYTES = 8 * 1024 * 1024  # native pixel data above this stays on disk and is read frame by frame


def is_dicom_file(path: Path) -> bool:
    """A Part 10 preamble, or at least a DICOM file name (a preamble-less object from an old modality)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or Path(path).suffix.lower() in (".dcm", ".dicom")


def read_dicom(path: Path | str, limits: DecodeLimits = DEFAULT_LIMITS) -> Dataset:
    """Read a DICOM file; any failure becomes one `InputError` line naming the file.

    Large native (uncompressed) pixel data is not loaded: an uncompressed ultrasound cine can be hundreds
    of MB, and `iter_frames` reads it one frame at a time from the file.
    """
    path = Path(path)
    why = deflate_refusal(path, limits) if path.is_file() else None
    if why:
        raise InputError(f"{path}: {why}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, defer_size=DEFER_BYTES)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except InvalidDicomError:
        raise InputError(f"{path}: not a DICOM file (no DICM preamble / file meta)") from None
    except MemoryError:
        raise InputError(f"{path}: too large to read on this device") from None
    except Exception as e:  # pydicom raises many types on corrupt bytes; each is this object's problem
        raise InputError(f"{path}: truncated or corrupt DICOM file ({one_line(e)})") from None
    # pydicom reads a file cut short inside an element as a (partly) empty dataset plus a warning
    for w in caught:
        msg = str(w.message)
        if "End of file" in msg or "truncat" in msg.lower():
            raise InputError(f"{path}: truncated DICOM file ({_short(msg.replace(f' in file {path}', ''))})")
    if len(ds) == 0:
        raise InputError(f"{path}: truncated DICOM file (no data elements after the file meta)")
    return ds


def _short(e: BaseException | str) -> str:
    s = str(e).strip().splitlines()
    return s[0][:160] if s else "no detail"


_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),\s?([0-9A-Fa-f]{4})\)")
_LONG_QUOTED = re.compile(r"'[^']{17,}'|\"[^\"]{17,}\"")  # element values (names, ids) stay out of messages


def _header_problem(e: BaseException) -> str:
    """pydicom's complaint about one element, led by the element it names (its message puts it last)."""
    m = _TAG.search(str(e))
    msg = _LONG_QUOTED.sub("'<value withheld>'", str(e).strip())
    first = msg.split(". ")[0].splitlines()[0][:120] if msg else type(e).__name__
    if m is None:
        return f"header cannot be read ({type(e).__name__}: {first})"
    from pydicom.datadict import keyword_for_tag

    tag = int(m.group(1) + m.group(2), 16)
    name = keyword_for_tag(tag) or "private element"
    return f"header element ({m.group(1)},{m.group(2)}) {name} cannot be read ({type(e).__name__}: {first})"


def _uid_name(uid: str | None) -> str | None:
    if not uid:
        return None
    u = UID(str(uid))
    return f"{u.name} ({u})" if u.name != str(u) else str(u)


# ---------------------------------------------------------------------------------------- inspection


def describe(ds: Dataset, path: Path | str = "<dataset>", limits: DecodeLimits = DEFAULT_LIMITS) -> DicomInfo:
    """Everything `inspect` shows; `accepted`/`reason` say whether decoding would be attempted.

    Never raises for what is in the object: a header element pydicom cannot convert (an odd length, an
    unknown VR, text in a number) is the refusal reason, naming the element where pydicom does."""
    try:
        with warnings.catch_warnings():
            # pydicom warns with the raw element value, which may be a patient's name: never let it reach a log
            warnings.simplefilter("ignore")
            return _describe(ds, str(path), limits)
    except Exception as e:  # lazily converted elements raise on first access
        return DicomInfo(path=str(path), accepted=False, reason=_header_problem(e))


def _describe(ds: Dataset, path: str, limits: DecodeLimits) -> DicomInfo:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    spacing, spacing_src = pixel_spacing(ds)
    rate, rate_src = frame_rate(ds)
    info = dict(
        path=path, modality=ds.get("Modality"), sop_class=_uid_name(ds.get("SOPClassUID")),
        transfer_syntax=_uid_name(ts), photometric=ds.get("PhotometricInterpretation"), rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")), frames=_int(ds.get("NumberOfFrames", 1) or 1) if "PixelData" in ds else None,
        samples_per_pixel=_int(ds.get("SamplesPerPixel")), bits_allocated=_int(ds.get("BitsAllocated")),
        bits_stored=_int(ds.get("BitsStored")), spacing_mm=spacing, spacing_source=spacing_src, frame_rate=rate,
        frame_rate_source=rate_src, region=us_region(ds)[0], manufacturer=ds.get("Manufacturer"),
    )
    reason = refusal_reason(ds, limits)
    return DicomInfo(accepted=reason is None, reason=reason, **info)


def _int(v: Any) -> int | None:
    try:
        return int(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def refusal_reason(ds: Dataset, limits: DecodeLimits = DEFAULT_LIMITS) -> str | None:
    """Why this object cannot become frames (None: it can). Checked before any pixel is decoded."""
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            return "float pixel data is not supported"
        sop = _uid_name(ds.get("SOPClassUID")) or "unknown SOP class"
        if "Image" in sop:  # an image SOP class without its pixels: the file ends before them
            return f"truncated file: {sop} object ends before its pixel data"
        return f"not an image: {sop} has no pixel data"
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None:
        return "no transfer syntax in the file meta"
    try:
        dec = get_decoder(ts)
    except NotImplementedError:
        return f"unsupported transfer syntax {_uid_name(ts)}"
    if not dec.is_available:
        return f"no decoder installed for transfer syntax {_uid_name(ts)}"
    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    spp, ba = _int(ds.get("SamplesPerPixel")), _int(ds.get("BitsAllocated"))
    if not rows or not cols or not spp or not ba:
        return "image attributes missing (Rows, Columns, SamplesPerPixel, BitsAllocated)"
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    if pi not in SUPPORTED_PHOTOMETRIC:
        return f"unsupported photometric interpretation {pi or '(missing)'}"
    if (spp == 1) != (pi in GRAYSCALE or pi == "PALETTE COLOR"):
        return f"{spp} sample(s) per pixel does not fit photometric interpretation {pi}"
    if ba not in (1, 8, 16, 32):
        return f"{ba} bits allocated is not supported"
    why = value_refusal(ds, rows, cols, spp, ba, pi)
    if why:
        return why
    nframes = _int(ds.get("NumberOfFrames", 1) or 1) or 1
    why = size_refusal(rows, cols, spp, ba, nframes, limits) or codestream_refusal(ds, UID(ts), rows, cols, nframes)
    if why:
        return why
    if not UID(ts).is_compressed:
        bits = rows * cols * spp * nframes * ba
        expected = (bits + 7) // 8
        if pi == "YBR_FULL_422":
            expected = expected * 2 // 3
        got = pixel_data_length(ds)
        if got < expected:
            return (f"wrong pixel data length: {got} bytes, expected {expected} for {nframes} frame(s) of "
                    f"{rows}x{cols}x{spp} at {ba} bits (truncated file?)")
    return None


def pixel_data_length(ds: Dataset) -> int:
    """Bytes of Pixel Data actually present, without loading a deferred element: its declared length,
    cut to what the file really holds after the element's value offset (a truncated file declares more)."""
    elem = ds.get_item(0x7FE00010, keep_deferred=True)
    value = getattr(elem, "value", None)
    if value is not None:
        return len(value)
    length = int(getattr(elem, "length", 0) or 0)
    tell = getattr(elem, "value_tell", None)
    fname = getattr(ds, "filename", None)
    if tell is not None and isinstance(fname, str):
        with contextlib.suppress(OSError):
            length = max(0, min(length, Path(fname).stat().st_size - int(tell)))
    return length


def check(ds: Dataset, path: Path | str, limits: DecodeLimits = DEFAULT_LIMITS) -> DicomInfo:
    info = describe(ds, path, limits)
    if not info.accepted:
        raise InputError(f"{path}: {info.reason}")
    return info


# ------------------------------------------------------------------------------- geometry and timing


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) spacing in mm and the attribute it came from.

    PixelSpacing (calibrated, patient plane) wins over ImagerPixelSpacing (detector plane, what CR/DX
    consoles usually fill), then the enhanced functional groups, then the ultrasound region's
    PhysicalDeltaY/X when its unit is cm. Zero or negative values (seen in real CR files) count as absent.
    """
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        sp = _pair(ds.get(key))
        if sp:
            return sp, key
    for fg in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            sp = _pair(ds[fg][0].PixelMeasuresSequence[0].PixelSpacing)
        except (KeyError, IndexError, AttributeError):
            sp = None
        if sp:
            return sp, f"{fg}.PixelMeasuresSequence.PixelSpacing"
    region, item = us_region(ds)
    if item is not None and item.get("PhysicalUnitsXDirection") == US_UNIT_CM == item.get("PhysicalUnitsYDirection"):
        sp = _pair([item.get("PhysicalDeltaY"), item.get("PhysicalDeltaX")], scale=10.0)
        if sp:
            return sp, "SequenceOfUltrasoundRegions.PhysicalDeltaY/X"
    return None, None


def _pair(v: Any, scale: float = 1.0) -> tuple[float, float] | None:
    try:
        a, b = float(v[0]) * scale, float(v[1]) * scale
    except (TypeError, ValueError, IndexError):
        return None
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        return None
    return (a, b)


def us_region(ds: Dataset) -> tuple[Region | None, Dataset | None]:
    """The ultrasound imaging region: the largest 2D region (else the largest region of any format).

    Everything outside it may carry burned-in patient text, so `edge.imaging.deid.mask_outside_region` uses it.
    """
    seq = ds.get("SequenceOfUltrasoundRegions")
    if not seq:
        return None, None
    rows, cols = _int(ds.get("Rows")) or 1 << 30, _int(ds.get("Columns")) or 1 << 30
    best: tuple[tuple[bool, int], Region, Dataset] | None = None
    for item in seq:
        try:
            x0, y0 = int(item.RegionLocationMinX0), int(item.RegionLocationMinY0)
            x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1  # Max is inclusive
        except (AttributeError, TypeError, ValueError):
            continue
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        r = Region(x0, y0, x1, y1)
        rank = (item.get("RegionSpatialFormat") == US_SPATIAL_2D, r.width * r.height)
        if best is None or rank > best[0]:
            best = (rank, r, item)
    return (best[1], best[2]) if best else (None, None)


def frame_rate(ds: Dataset) -> tuple[float | None, str | None]:
    """Frames per second as recorded: FrameTime (ms between frames, what the device used) first,
    then CineRate, then RecommendedDisplayFrameRate, then the mean of FrameTimeVector."""
    try:
        ft = float(ds.get("FrameTime") or 0)
        if ft > 0:
            return 1000.0 / ft, "FrameTime"
        for key in ("CineRate", "RecommendedDisplayFrameRate"):
            v = float(ds.get(key) or 0)
            if v > 0:
                return v, key
        ftv = ds.get("FrameTimeVector")
        if ftv and len(ftv) > 1:
            mean = float(np.mean([float(x) for x in list(ftv)[1:]]))
            if mean > 0:
                return 1000.0 / mean, "FrameTimeVector"
    except (TypeError, ValueError):
        pass
    return None, None


def acquisition_time(ds: Dataset) -> float | None:
    """Epoch seconds of acquisition. DICOM times are local to the modality; TimezoneOffsetFromUTC is
    honoured when present, otherwise the device's own time zone is assumed (they share a site)."""
    candidates = [str(ds.get("AcquisitionDateTime") or "")]
    for d, t in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
                 ("StudyDate", "StudyTime")):
        if ds.get(d):
            candidates.append(str(ds.get(d)) + str(ds.get(t) or ""))
    tz_off = str(ds.get("TimezoneOffsetFromUTC") or "")
    for s in candidates:
        s = s.strip()
        if len(s) < 8:
            continue
        tz = None
        for sep in ("+", "-"):
            if sep in s[8:]:
                s, off = s[: s.rindex(sep)], s[s.rindex(sep):]
                tz_off = off
        main, _, frac = s.partition(".")
        fmt = {8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}.get(len(main))
        if fmt is None:
            continue
        try:
            dt = datetime.strptime(main, fmt)
            if frac.isdigit():
                dt += timedelta(seconds=float("0." + frac))
        except ValueError:
            continue
        if len(tz_off) == 5 and tz_off[0] in "+-":
            try:
                mins = int(tz_off[1:3]) * 60 + int(tz_off[3:5])
                tz = timezone(timedelta(minutes=mins if tz_off[0] == "+" else -mins))
            except ValueError:
                tz = None
        return (dt.replace(tzinfo=tz) if tz else dt.astimezone()).timestamp()
    return None


_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def parse_age(value: Any) -> float | None:
    """DICOM AS ('045Y', '006M') -> years; anything else None (an unreadable age restricts nothing)."""
    m = _AGE.match(str(value or "").strip().upper())
    return round(int(m.group(1)) * _AGE_UNIT_YEARS[m.group(2)], 3) if m else None


def acquisition(ds: Dataset) -> Acquisition:
    """The attributes intended-use rules read; a value pydicom cannot convert counts as absent."""
    def s(key: str) -> str | None:
        try:
            v = ds.get(key)
        except Exception:
            return None
        return str(v).strip() or None if v not in (None, "") else None

    return Acquisition(body_part=s("BodyPartExamined"), view=s("ViewPosition"), photometric=s("PhotometricInterpretation"),
                       patient_age_years=parse_age(s("PatientAge")), manufacturer=s("Manufacturer"))


def study_ref(ds: Dataset) -> StudyRef:
    def s(key: str) -> str | None:
        v = ds.get(key)
        return str(v) if v not in (None, "") else None

    return StudyRef(study_uid=s("StudyInstanceUID"), series_uid=s("SeriesInstanceUID"),
                    sop_instance_uid=s("SOPInstanceUID"), patient_id=s("PatientID"),
                    accession_number=s("AccessionNumber"), sop_class_uid=s("SOPClassUID"))


# ------------------------------------------------------------------------------------ display mapping


def display_range(ds: Dataset, first_frame: np.ndarray | None = None) -> tuple[float, float]:
    """The (black, white) output values of the VOI stage, which map to display 0 and 1.

    VOI LUT sequence: 0 .. the LUT's largest representable entry (by the bits its data actually uses,
    since real LUTs often declare 16 bits and hold 12). Window: pydicom's output range (stored range
    after rescale). Neither: 8-bit data is shown over its full stored range; deeper data over the
    min..max of the first frame after the Modality LUT, kept for every frame so a cine does not flicker.
    """
    voi = ds.get("VOILUTSequence")
    if voi:
        item = voi[0]
        lut = _lut_values(item)
        nbits = max(8, int(lut.max()).bit_length()) if lut.size else int(item.LUTDescriptor[2])
        return 0.0, float(2**nbits - 1)
    bits = int(ds.get("BitsStored") or ds.BitsAllocated)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if not has_window and bits > 8 and first_frame is not None:
        v = apply_modality_lut(first_frame, ds)
        lo, hi = float(np.min(v)), float(np.max(v))
        return (lo, hi) if hi > lo else (lo, lo + 1.0)
    mlut = ds.get("ModalityLUTSequence")
    if mlut:
        return 0.0, float(2 ** int(mlut[0].LUTDescriptor[2]) - 1)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, icpt = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and icpt is not None:
        lo, hi = lo * float(slope) + float(icpt), hi * float(slope) + float(icpt)
    return float(min(lo, hi)), float(max(lo, hi))


def _lut_values(item: Dataset) -> np.ndarray:
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        return np.frombuffer(data, dtype="<u2")
    return np.asarray(data if isinstance(data, list) else [data], dtype=np.int64)


def grayscale_display(values: np.ndarray, ds: Dataset, black_white: tuple[float, float]) -> np.ndarray:
    """Stored values -> display float32 [0, 1] (the reference chain, run once over the value domain)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = apply_voi_lut(apply_modality_lut(values, ds), ds, index=0, prefer_lut=True)
    lo, hi = black_white
    out = np.clip((np.asarray(v, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out


def palette_to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Palette output -> uint8. Real 16-bit palettes often hold 8-bit values (viewers check the data,
    not the descriptor), so the scale follows the largest entry actually present."""
    if rgb.dtype == np.uint8:
        return rgb
    if int(rgb.max(initial=0)) <= 255:
        return rgb.astype(np.uint8)
    return np.round(rgb.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)


class DisplayMapper:
    """Per-object stored-value -> display lookup, built from the first decoded frame.

    8/16-bit grayscale and palette objects get a table over every possible stored value, so each frame is
    one numpy gather; other depths run the chain directly.
    """

    def __init__(self, ds: Dataset, first_frame: np.ndarray) -> None:
        self.photometric = str(ds.PhotometricInterpretation).strip()
        self.bits_allocated = int(ds.BitsAllocated)
        self.signed = int(ds.get("PixelRepresentation", 0)) == 1
        self._ds = ds
        self._lut: np.ndarray | None = None
        self._fn: Callable[[np.ndarray], np.ndarray]
        if self.photometric in GRAYSCALE:
            bw = display_range(ds, first_frame)
            self._fn = lambda a: grayscale_display(a, ds, bw)
            self._build_lut()
        elif self.photometric == "PALETTE COLOR":
            self._fn = self._palette
            self._build_lut()
        else:
            self._fn = self._color

    def _build_lut(self) -> None:
        ba = self.bits_allocated
        if ba not in (8, 16):
            return
        domain = np.arange(2**ba, dtype=f"uint{ba}")
        if self.signed:
            domain = domain.view(f"int{ba}")
        self._lut = self._fn(domain)

    def _palette(self, a: np.ndarray) -> np.ndarray:
        return palette_to_uint8(apply_color_lut(a, self._ds))

    def _color(self, a: np.ndarray) -> np.ndarray:
        if a.dtype == np.uint8:
            return a
        bits = int(self._ds.get("BitsStored") or self.bits_allocated)
        return np.round(a.astype(np.float32) * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        if self._lut is None:
            return np.ascontiguousarray(self._fn(arr))
        ba = self.bits_allocated
        if arr.dtype.itemsize != ba // 8 or not arr.dtype.isnative:
            arr = arr.astype(f"int{ba}" if self.signed else f"uint{ba}")
        return self._lut[arr.view(f"uint{ba}")]


# --------------------------------------------------------------------------------------------- frames


def _raw_frames(ds: Dataset, path: Path | None) -> Iterator[np.ndarray]:
    """Decoded frames, lazily: stored values for grayscale/palette, RGB for colour.

    JPEG baseline YBR cines (every ultrasound cart) are decoded by OpenCV's libjpeg-turbo, 5-10x faster
    than pydicom's pure-numpy colour conversion; the output is verified against pydicom in the tests.
    """
    ts = ds.file_meta.TransferSyntaxUID
    pi = str(ds.PhotometricInterpretation).strip()
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    rows, cols = int(ds.Rows), int(ds.Columns)
    if ts == JPEGBaseline8Bit and pi in ("YBR_FULL_422", "YBR_FULL") and int(ds.SamplesPerPixel) == 3:
        for b in generate_frames(ds.PixelData, number_of_frames=nframes):
            img = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
            if img is None or img.shape != (rows, cols, 3):
                raise ValueError("JPEG frame does not decode to the declared size")
            yield cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return
    src: Any = ds if path is None or ds.get("NumberOfFrames", 1) in (None, 1) else path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield from iter_pixels(src)


def iter_frames(ds: Dataset, source: str, path: Path | str | None = None, *, check_first: bool = True,
                limits: DecodeLimits = DEFAULT_LIMITS, default_modality: str | None = None) -> Iterator[Frame]:
    """Frames of one object, decoded one at a time. Every failure raises `InputError`. An object without
    Modality takes ``default_modality`` (the source's declared one) or none at all: the models' intended
    use then refuses it rather than have a modality guessed."""
    where = str(path) if path is not None else "<dataset>"
    info = check(ds, where, limits) if check_first else describe(ds, where, limits)
    nframes = info.frames or 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = study_ref(ds)
            acquired = acquisition_time(ds) or time.time()
            acq = acquisition(ds)
    except Exception as e:  # a study element pydicom cannot convert
        raise InputError(f"{where}: {_header_problem(e)}") from None
    rate = info.frame_rate
    origin = Path(path) if path is not None else None
    mapper: DisplayMapper | None = None
    index = 0
    it = _raw_frames(ds, origin)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            break
        except MemoryError:
            raise InputError(f"{where}: frame {index} is too large to decode on this device") from None
        except Exception as e:  # any decoder failure on real-world bytes is an input problem
            raise InputError(f"{where}: frame {index} cannot be decoded ({one_line(e)})") from None
        try:
            if mapper is None:
                mapper = DisplayMapper(ds, raw)
            pixels = mapper(raw)
        except Exception as e:  # the display chain on values the header checks could not foresee
            raise InputError(f"{where}: frame {index} cannot be shown ({one_line(e)})") from None
        if pixels.ndim == 3 and pixels.shape[2] == 1:
            pixels = pixels[..., 0]
        yield Frame(pixels=pixels, modality=str(info.modality or default_modality or ""), source=source, index=index,
                    spacing_mm=info.spacing_mm, frame_rate=rate,
                    acquired_at=acquired + (index / rate if rate else 0.0), study=study, region=info.region,
                    live=False, origin=origin, frame_count=nframes, acquisition=acq)
        index += 1
    if index < nframes:
        raise InputError(f"{where}: only {index} of {nframes} frames present (truncated pixel data)")


def frames_from_file(path: Path | str, source: str = "file", limits: DecodeLimits = DEFAULT_LIMITS,
                     default_modality: str | None = None) -> Iterator[Frame]:
    ds = read_dicom(path, limits)
    yield from iter_frames(ds, source, path, limits=limits, default_modality=default_modality)


def decode_file(path: Path | str, source: str = "file", limits: DecodeLimits = DEFAULT_LIMITS) -> list[Frame]:
    """All frames of a file (small objects; use `frames_from_file` for cines)."""
    return list(frames_from_file(path, source, limits))
