"""What a DICOM object must satisfy before any pixel of it is decoded.

Objects arrive from consoles, USB sticks and any C-STORE peer the site allows, so the header is input
like any other: a fault harness crashed the daemon with a VOI LUT Function ``LINEAX``, a WindowCenter
``21A0.0``, an odd-length Columns element and an unknown VR, and took it to 7 GB for 17 s with a 310 KB
RLE file declaring 60000 x 60000. Every check here turns such an object into one refusal line *before*
the decoders allocate anything:

- declared sizes: frames x rows x columns x samples x bytes per sample, per frame and per object,
  against the profile's ``input_limits`` (`DecodeLimits`), for every transfer syntax;
- compressed frames whose own codestream (JPEG SOF, JPEG 2000 SIZ) declares another size than the
  header: decoders size their output from the codestream, not from Rows/Columns;
- deflated data sets, which pydicom inflates whole while reading: inflated here first, with a cap;
- header values the display chain would trip over (enumerated values, numbers that are not numbers,
  LUTs that do not match their descriptors).
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from edge.imaging.limits import DEFAULT_LIMITS, MB, DecodeLimits
from edge.units import mib

__all__ = ["DEFAULT_LIMITS", "DecodeLimits", "codestream_refusal", "deflate_refusal", "size_refusal", "value_refusal"]
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
HEADER_SLACK_BYTES = 16 * MB  # what a data set may hold beside its pixels (overlays, private tags)
_CODESTREAM_PEEK = 64 * 1024  # the size declarations sit in the first bytes of a frame
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}  # F7: JPEG-LS
_JPEG_STANDALONE = {0x01, 0xD8, *range(0xD0, 0xD8)}
_CODESTREAMS = {**{f"1.2.840.10008.1.2.4.{n}": "JPEG" for n in (50, 51, 57, 70, 80, 81)},  # incl. JPEG-LS
                **{f"1.2.840.10008.1.2.4.{n}": "JPEG 2000" for n in (90, 91, 92, 93, 201, 202, 203)}}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OW", b"OV", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _mb(n: float) -> str:
    return mib(n)


# ------------------------------------------------------------------------------- before reading


def deflate_refusal(path: Path, limits: DecodeLimits) -> str | None:
    """A deflated data set that would inflate beyond the object limit (pydicom inflates it whole)."""
    try:
        offset, ts = _file_meta_end(path)
    except (OSError, ValueError, struct.error):
        return None  # not a well-formed Part 10 header: pydicom's reader reports it
    if ts != DeflatedExplicitVRLittleEndian:
        return None
    cap = limits.max_object_bytes + HEADER_SLACK_BYTES
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(1 << 20):
                while chunk:
                    total += len(d.decompress(chunk, 1 << 20))
                    chunk = d.unconsumed_tail
                    if total > cap:
                        return (f"deflated data set inflates to more than {_mb(cap)}, over the device's limit "
                                "(input_limits.max_object_mb)")
    except zlib.error as e:
        return f"deflated data set is corrupt ({e})"
    return None


def _file_meta_end(path: Path) -> tuple[int, str]:
    """Offset where the data set starts after the Part 10 file meta, and the transfer syntax UID."""
    with open(path, "rb") as f:
        head = f.read(132 + 65536)
    if head[128:132] != b"DICM":
        raise ValueError("no preamble")
    i, ts = 132, ""
    while i + 8 <= len(head):
        group, elem = struct.unpack("<HH", head[i:i + 4])
        if group != 0x0002:
            return i, ts
        vr = head[i + 4:i + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<L", head[i + 8:i + 12])
            start = i + 12
        else:
            (length,) = struct.unpack("<H", head[i + 6:i + 8])
            start = i + 8
        if elem == 0x0010:
            ts = head[start:start + length].decode("ascii", "replace").strip("\0 ")
        i = start + length
    raise ValueError("file meta longer than expected")


# --------------------------------------------------------------------------------- header values


def _num(v: Any) -> list[float]:
    """Every value of a numeric (DS/IS/US...) element as floats; ValueError when one is not a number."""
    vals = list(v) if isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue" else [v]
    out = [float(x) for x in vals]
    if not all(math.isfinite(x) for x in out):
        raise ValueError("not finite")
    return out


def value_refusal(ds: Dataset, rows: int, cols: int, spp: int, ba: int, pi: str) -> str | None:
    """Header values the display chain cannot use."""
    if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
        return f"image size {rows}x{cols} is not a valid Rows x Columns"
    if spp not in (1, 3):
        return f"SamplesPerPixel {spp} is neither 1 nor 3"
    bs = ds.get("BitsStored")
    if bs is not None and not 1 <= int(bs) <= ba:
        return f"BitsStored {bs} does not fit BitsAllocated {ba}"
    pr = ds.get("PixelRepresentation", 0)
    if int(pr) not in (0, 1):
        return f"PixelRepresentation {pr} is neither 0 (unsigned) nor 1 (signed)"
    if spp == 3 and int(ds.get("PlanarConfiguration", 0) or 0) not in (0, 1):
        return f"PlanarConfiguration {ds.get('PlanarConfiguration')} is neither 0 nor 1"
    if "NumberOfFrames" in ds:
        nf = ds.NumberOfFrames
        try:
            ok = nf in (None, "") or (float(nf) == int(float(nf)) and int(float(nf)) >= 1)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            return f"NumberOfFrames {str(nf)!r} is not a whole number >= 1"
    for key in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if key in ds and ds[key].value not in (None, ""):
            try:
                vals = _num(ds[key].value)
            except (TypeError, ValueError):
                return f"{key} {str(ds[key].value)!r} is not a number"
            if key == "RescaleSlope" and vals[0] == 0:
                return "RescaleSlope is 0"
            if key == "WindowWidth" and any(w < 1 for w in vals) and ds.get("VOILUTFunction") != "LINEAR_EXACT":
                return f"WindowWidth {vals} is below 1"
    fn = ds.get("VOILUTFunction")
    if fn not in (None, "") and str(fn).strip() not in VOI_FUNCTIONS:
        return f"VOI LUT Function {str(fn)!r} is not one of {', '.join(VOI_FUNCTIONS)}"
    for seq in ("ModalityLUTSequence", "VOILUTSequence"):
        if seq in ds and ds[seq].value:
            why = _lut_refusal(ds[seq].value[0], seq)
            if why:
                return why
    if pi == "PALETTE COLOR":
        for c in ("Red", "Green", "Blue"):
            desc = ds.get(f"{c}PaletteColorLookupTableDescriptor")
            if desc is None or len(_num(desc)) != 3:
                return f"PALETTE COLOR without a valid {c}PaletteColorLookupTableDescriptor"
            if f"{c}PaletteColorLookupTableData" not in ds and "SegmentedRedPaletteColorLookupTableData" not in ds:
                return f"PALETTE COLOR without {c}PaletteColorLookupTableData"
    return None


def _lut_refusal(item: Dataset, seq: str) -> str | None:
    desc = item.get("LUTDescriptor")
    try:
        d = _num(desc)
    except (TypeError, ValueError):
        return f"{seq}: LUTDescriptor is not three numbers"
    if len(d) != 3 or int(d[2]) not in range(8, 17):
        return f"{seq}: LUTDescriptor {d} is not (entries, first value, 8-16 bits)"
    entries = int(d[0]) or 65536
    data = item.get("LUTData")
    if data is None:
        return f"{seq}: no LUTData"
    n = len(data) // 2 if isinstance(data, (bytes, bytearray)) else len(data) if isinstance(data, (list, tuple)) or \
        type(data).__name__ == "MultiValue" else 1
    if n < entries:
        return f"{seq}: LUTData holds {n} entries, the descriptor says {entries}"
    return None


# ---------------------------------------------------------------------------------- declared sizes


def size_refusal(rows: int, cols: int, spp: int, ba: int, nframes: int, limits: DecodeLimits) -> str | None:
    per_sample = max(1, ba // 8)  # 1-bit data is unpacked to one byte a pixel
    frame = rows * cols * spp * per_sample
    what = f"{nframes} frame(s) of {rows}x{cols}x{spp} at {ba} bits"
    if frame > limits.max_frame_bytes:
        return (f"declares {what}: {_mb(frame)} a frame decoded, over the device's limit of "
                f"{_mb(limits.max_frame_bytes)} (input_limits.max_frame_mb)")
    if frame * nframes > limits.max_object_bytes:
        return (f"declares {what}: {_mb(frame * nframes)} decoded, over the device's limit of "
                f"{_mb(limits.max_object_bytes)} (input_limits.max_object_mb)")
    return None


def codestream_refusal(ds: Dataset, ts: UID, rows: int, cols: int, nframes: int) -> str | None:
    """Compressed frames must declare the header's size in their own codestream."""
    if not ts.is_compressed or ts == DeflatedExplicitVRLittleEndian:
        return None
    kind = _CODESTREAMS.get(str(ts))
    if kind is None:
        return None  # RLE: the decoder sizes its output from Rows/Columns, checked above
    try:
        for i, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=nframes)):
            size = _j2k_size(frame) if kind == "JPEG 2000" else _jpeg_size(frame)
            if size is None:
                return f"frame {i} is not a {kind} codestream (no size declaration found)"
            h, w = size
            if w != cols or (h != rows and h != 0):  # JPEG may leave the height to a DNL marker
                return f"frame {i}: the {kind} codestream declares {w}x{h}, the header {cols}x{rows}"
            if i + 1 >= nframes:
                break
    except (ValueError, struct.error, KeyError, TypeError) as e:
        return f"encapsulated pixel data is malformed ({e})"
    return None


def _jpeg_size(b: bytes) -> tuple[int, int] | None:
    """(height, width) from the first SOF marker, walking the marker segments."""
    b = b[:_CODESTREAM_PEEK]
    if b[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(b):
        if b[i] != 0xFF:
            return None
        m = b[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m in _JPEG_STANDALONE:
            i += 2
            continue
        if m in _JPEG_SOF:
            if i + 9 > len(b):
                return None
            h, w = struct.unpack(">HH", b[i + 5:i + 9])
            return h, w
        if m == 0xDA:
            return None  # scan data before any frame header
        (seg,) = struct.unpack(">H", b[i + 2:i + 4])
        i += 2 + seg
    return None


def _j2k_size(b: bytes) -> tuple[int, int] | None:
    """(height, width) from the SIZ marker of a raw codestream or one inside a JP2 box."""
    j = b[:_CODESTREAM_PEEK].find(b"\xff\x4f\xff\x51")
    if j < 0 or j + 24 > len(b):
        return None
    xsiz, ysiz, xo, yo = struct.unpack(">LLLL", b[j + 8:j + 24])
    if xsiz < xo or ysiz < yo:
        return None
    return ysiz - yo, xsiz - xo
