"""Byte-level mutations of real DICOM files: what a broken modality, a bad anonymizer or a hostile
sender produces, below the level where pydicom's writer would refuse or repair it.

`ElementMap` finds each top-level element's header and value in the file (explicit or implicit VR, either
byte order); `Mutator` rewrites values, VRs and length fields, or cuts the file, and writes the mutant.
The regression tests build the named poison objects from real files with it, and the header fuzzer
(`tests/fuzz_headers.py`) draws seeded random mutations.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID

from tests.support.dicom_files import find

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OW", b"OV", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True)
class Element:
    tag: int
    vr: bytes | None  # None: implicit VR
    header: int  # offset of the tag
    length_at: int  # offset of the length field
    length_size: int  # 2 or 4
    value: int  # offset of the value
    length: int  # declared length (0xFFFFFFFF: undefined)


class ElementMap:
    """Top-level data elements of one file (file meta included), by tag: a small walker of its own, so a
    file pydicom would refuse can still be mapped (and nested sequences are skipped, not parsed)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.elements: dict[int, Element] = {}
        if data[128:132] != b"DICM":
            raise ValueError("not a Part 10 file")
        i, ts = self._walk(132, implicit=False, little=True, meta=True)
        self.meta_end = i
        ts = UID(ts or "1.2.840.10008.1.2.1")
        self.implicit = ts == "1.2.840.10008.1.2"
        self.little = ts != "1.2.840.10008.1.2.2"
        self._walk(i, self.implicit, self.little)

    def _header(self, i: int, implicit: bool, little: bool) -> tuple[int, bytes | None, int, int, int]:
        e = "<" if little else ">"
        group, elem = struct.unpack(e + "HH", self.data[i:i + 4])
        tag = group << 16 | elem
        if group == 0xFFFE:  # item / delimiters carry no VR
            return tag, None, i + 4, 4, struct.unpack(e + "L", self.data[i + 4:i + 8])[0]
        if implicit:
            return tag, None, i + 4, 4, struct.unpack(e + "L", self.data[i + 4:i + 8])[0]
        vr = self.data[i + 4:i + 6]
        if vr in LONG_VRS:
            return tag, vr, i + 8, 4, struct.unpack(e + "L", self.data[i + 8:i + 12])[0]
        return tag, vr, i + 6, 2, struct.unpack(e + "H", self.data[i + 6:i + 8])[0]

    def _walk(self, i: int, implicit: bool, little: bool, meta: bool = False) -> tuple[int, str]:
        ts = ""
        while i + 8 <= len(self.data):
            tag, vr, length_at, size, length = self._header(i, implicit, little)
            if meta and tag >> 16 != 0x0002:
                return i, ts
            value = length_at + size
            self.elements[tag] = Element(tag, vr, i, length_at, size, value, length)
            if tag == 0x00020010:
                ts = self.data[value:value + length].decode("ascii", "replace").strip("\0 ")
            if tag == 0x7FE00010:
                break
            i = self._skip_sequence(value, implicit, little) if length == 0xFFFFFFFF else value + length
        return i, ts

    def _skip_sequence(self, i: int, implicit: bool, little: bool) -> int:
        """Past an undefined-length sequence: items until the sequence delimiter (FFFE,E0DD)."""
        while i + 8 <= len(self.data):
            tag, _, length_at, size, length = self._header(i, True, little)
            i = length_at + size
            if tag == 0xFFFEE0DD:
                return i
            if tag == 0xFFFEE000 and length == 0xFFFFFFFF:  # undefined-length item: its elements, then E00D
                while i + 8 <= len(self.data):
                    t, _, la, sz, ln = self._header(i, implicit, little)
                    if t == 0xFFFEE00D:
                        i = la + sz
                        break
                    i = self._skip_sequence(la + sz, implicit, little) if ln == 0xFFFFFFFF else la + sz + ln
            elif tag == 0xFFFEE000:
                i += length
        return i


class Mutator:
    """A mutable copy of one file; each method returns self so mutations chain."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.buf = bytearray(Path(path).read_bytes())

    @property
    def map(self) -> ElementMap:
        return ElementMap(bytes(self.buf))

    def _el(self, tag: int) -> Element:
        m = self.map
        if tag not in m.elements:
            raise KeyError(f"{self.path.name} has no element {tag:08X}")
        return m.elements[tag]

    def has(self, tag: int) -> bool:
        return tag in self.map.elements

    def set_value(self, tag: int, value: bytes, length: int | None = None) -> Mutator:
        """Replace an element's value; the length field says ``length`` (default: the new size)."""
        m = self.map
        e = m.elements[tag]
        if e.length == 0xFFFFFFFF:
            raise ValueError("undefined-length element")
        endian = "<" if (m.little or tag >> 16 == 2) else ">"
        n = len(value) if length is None else length
        fmt = endian + ("H" if e.length_size == 2 else "L")
        self.buf[e.length_at:e.length_at + e.length_size] = struct.pack(fmt, n & (0xFFFF if e.length_size == 2 else 0xFFFFFFFF))
        self.buf[e.value:e.value + e.length] = value
        return self

    def set_text(self, tag: int, text: str) -> Mutator:
        """A string value, padded to even length with a space as DICOM requires (so only the content is wrong)."""
        b = text.encode("latin-1")
        return self.set_value(tag, b + b" " * (len(b) % 2))

    def set_us(self, tag: int, value: int) -> Mutator:
        m = self.map
        return self.set_value(tag, struct.pack(("<" if m.little else ">") + "H", value & 0xFFFF))

    def set_vr(self, tag: int, vr: bytes) -> Mutator:
        e = self._el(tag)
        if e.vr is None:
            raise ValueError("implicit VR file: no VR bytes to change")
        self.buf[e.header + 4:e.header + 6] = vr
        return self

    def set_length(self, tag: int, length: int) -> Mutator:
        m = self.map
        e = m.elements[tag]
        fmt = ("<" if m.little or tag >> 16 == 2 else ">") + ("H" if e.length_size == 2 else "L")
        self.buf[e.length_at:e.length_at + e.length_size] = struct.pack(fmt, length & (0xFFFF if e.length_size == 2 else 0xFFFFFFFF))
        return self

    def insert_before(self, tag: int, element: bytes) -> Mutator:
        """Splice raw element bytes (already encoded for this file's syntax) in front of ``tag``."""
        e = self._el(tag)
        self.buf[e.header:e.header] = element
        return self

    def encode(self, tag: int, vr: bytes, value: bytes) -> bytes:
        """One element encoded for this file's transfer syntax (for `insert_before`)."""
        m = self.map
        endian = "<" if m.little else ">"
        head = struct.pack(endian + "HH", tag >> 16, tag & 0xFFFF)
        if m.implicit:
            return head + struct.pack("<L", len(value)) + value
        if vr in LONG_VRS:
            return head + vr + b"\0\0" + struct.pack(endian + "L", len(value)) + value
        return head + vr + struct.pack(endian + "H", len(value)) + value

    def truncate(self, at: int) -> Mutator:
        del self.buf[at:]
        return self

    def flip(self, rng: random.Random, start: int, end: int, n: int) -> Mutator:
        for _ in range(n):
            i = rng.randrange(start, max(start + 1, end))
            if i < len(self.buf):
                self.buf[i] = rng.randrange(256)
        return self

    def write(self, dest: Path | str) -> Path:
        dest = Path(dest)
        dest.write_bytes(bytes(self.buf))
        return dest


# -------------------------------------------------------------------------- the named poison objects

ROWS, COLUMNS, BITS_ALLOCATED, WINDOW_CENTER, VOI_LUT_FUNCTION = 0x00280010, 0x00280011, 0x00280100, 0x00281050, 0x00281056
NUMBER_OF_FRAMES, PHOTOMETRIC = 0x00280008, 0x00280004


def voi_lut_function(src: Path, dest: Path, value: str = "LINEAX") -> Path:
    """A VOI LUT Function that is not one of LINEAR, LINEAR_EXACT, SIGMOID (needs a window to matter)."""
    m = Mutator(src)
    before = min(t for t in m.map.elements if t > VOI_LUT_FUNCTION)
    b = value.encode() + b" " * (len(value) % 2)
    return m.insert_before(before, m.encode(VOI_LUT_FUNCTION, b"CS", b)).write(dest)


def window_center(src: Path, dest: Path, value: str = "21A0.0") -> Path:
    return Mutator(src).set_text(WINDOW_CENTER, value).write(dest)


def odd_length_columns(src: Path, dest: Path) -> Path:
    """Columns (US, 2 bytes) declared 3 bytes long: every element after it is read off by one."""
    m = Mutator(src)
    e = m.map.elements[COLUMNS]
    return m.set_value(COLUMNS, bytes(m.buf[e.value:e.value + 2]) + b"\0", length=3).write(dest)


def bits_allocated_vr(src: Path, dest: Path, vr: bytes = b"XY") -> Path:
    """BitsAllocated with a VR no standard defines."""
    return Mutator(src).set_vr(BITS_ALLOCATED, vr).write(dest)


def huge_rle(dest: Path, rows: int = 60000, columns: int = 60000) -> Path:
    """A small, valid-looking RLE object declaring rows x columns (the fault harness used 60000 x 60000, 310 KB)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CR", "FAKE-POISON"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, columns, 1, 8, 8, 7
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    # one RLE segment of "repeat 128 zeros" runs: decodes to rows x columns bytes
    runs = (rows * columns) // 128
    seg = bytes([0x81, 0]) * min(runs, 155_000)
    header = struct.pack("<16L", 1, 64, *([0] * 14))
    ds.PixelData = encapsulate([header + seg])
    ds["PixelData"].VR = "OB"
    ds.save_as(dest, enforce_file_format=True)
    return Path(dest)


# ------------------------------------------------ the named poison objects, made into files

POISONS = {
    "voi-lut-function.dcm": (lambda d: voi_lut_function(find("RG3_J2KI.dcm"), d / "voi-lut-function.dcm"),
                             "VOI LUT Function 'LINEAX' is not one of LINEAR, LINEAR_EXACT, SIGMOID"),
    "window-center.dcm": (lambda d: window_center(find("RG3_J2KI.dcm"), d / "window-center.dcm"),
                          "WindowCenter '21A0.0' is not a number"),
    "odd-columns.dcm": (lambda d: odd_length_columns(find("US1_UNCR.dcm"), d / "odd-columns.dcm"),
                        "header element (0028,0011) Columns cannot be read"),
    "bits-allocated-vr.dcm": (lambda d: bits_allocated_vr(find("RG3_J2KI.dcm"), d / "bits-allocated-vr.dcm"),
                              "header element (0028,0100) BitsAllocated cannot be read"),
    "rle-60000.dcm": (lambda d: huge_rle(d / "rle-60000.dcm"),
                      "declares 1 frame(s) of 60000x60000x1 at 8 bits: 3,433 MiB a frame decoded, over the device's "
                      "limit of 64 MiB (input_limits.max_frame_mb)"),
}


def make_poisons(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {name: make(folder) for name, (make, _) in POISONS.items()}
