"""A seeded header fuzzer: mutants of real CR and ultrasound objects from several vendors, each fed through
the durable inbox exactly as the dicom-folder and dicom-store sources feed a received object.

Every mutant must end decoded (moved to processed/) or quarantined with a one-line reason; an exception
that escapes the inbox would have killed a source in the daemon. Peak RSS is reported so the test can
bound it.

    python -m tests.support.fuzz_headers --count 2000 --seed 1 [--keep DIR]   # prints one JSON summary line
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

from tests.support import dicom_mutations as dm

# fast-decoding real objects: Philips/GE/Aloka/SonoSite/Fuji/Agfa; native LE/BE/implicit, RLE, JPEG
# baseline/lossless, JPEG 2000; grey, RGB, YBR, palette; single frame and cine
SEEDS = ("OBXXXX1A_rle.dcm", "US1_J2KI.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "gdcm-US-ALOKA-16.dcm",
         "ExplVR_BigEnd.dcm", "examples_ybr_color.dcm", "RG3_J2KI.dcm", "examples_palette.dcm", "US1_UNCR.dcm",
         "OBXXXX1A_2frame.dcm", "6154")

IMAGE_TAGS = {
    "Rows": 0x00280010, "Columns": 0x00280011, "BitsAllocated": 0x00280100, "BitsStored": 0x00280101,
    "HighBit": 0x00280102, "PixelRepresentation": 0x00280103, "SamplesPerPixel": 0x00280002,
    "PlanarConfiguration": 0x00280006, "PhotometricInterpretation": 0x00280004, "NumberOfFrames": 0x00280008,
    "WindowCenter": 0x00281050, "WindowWidth": 0x00281051, "RescaleSlope": 0x00281053,
    "RescaleIntercept": 0x00281052, "VOILUTFunction": 0x00281056, "PixelSpacing": 0x00280030,
    "ImagerPixelSpacing": 0x00181164, "FrameTime": 0x00181063, "Modality": 0x00080060,
    "StudyInstanceUID": 0x0020000D, "SOPInstanceUID": 0x00080018, "TransferSyntaxUID": 0x00020010,
    "SequenceOfUltrasoundRegions": 0x00186011, "RedPaletteColorLookupTableDescriptor": 0x00281101,
    "PixelData": 0x7FE00010,
}
US_TAGS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
           "PlanarConfiguration")
TEXT_VALUES = {
    "PhotometricInterpretation": ("MONOCHROME3", "", "RGB", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME1", "\xff\xfe"),
    "VOILUTFunction": ("LINEAX", "SIGMOID", "LINEAR_EXACT", "", "linear"),
    "NumberOfFrames": ("0", "-1", "99999999", "1e9", "abc", "2", "65536"),
    "WindowCenter": ("21A0.0", "nan", "inf", "-0", "1e309", "", "40\\abc"),
    "WindowWidth": ("0", "-5", "nan", "1e-9", "zz", "1\\2\\3"),
    "RescaleSlope": ("0", "nan", "1e308", "x"),
    "RescaleIntercept": ("inf", "-1e308", "q"),
    "PixelSpacing": ("0\\0", "-1\\1", "abc", "1", "nan\\nan"),
    "ImagerPixelSpacing": ("0\\0", "x\\y"),
    "FrameTime": ("0", "-33", "abc", "1e-300"),
    "Modality": ("", "MR", "US\\CR", "\x00"),
    "StudyInstanceUID": ("", "1.2.abc", "9" * 80),
    "SOPInstanceUID": ("", "../../etc/passwd", "1" * 70),
    "TransferSyntaxUID": ("1.2.840.10008.1.2.4.50", "1.2.3.4", "", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99"),
}
US_VALUES = (0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 32, 64, 255, 4096, 60000, 65535)
VRS = (b"US", b"SS", b"UL", b"DS", b"IS", b"CS", b"LO", b"OB", b"OW", b"SQ", b"UN", b"UT", b"XY", b"\0\0", b"ss")


def _desc(name: str, what: str) -> str:
    return f"{name}:{what}"


def mutate(src: Path, rng: random.Random) -> tuple[bytes, list[str]]:
    """One mutant of ``src``: 1-3 seeded operations; returns the bytes and what was done."""
    m = dm.Mutator(src)
    done: list[str] = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        try:
            emap = m.map
        except Exception:  # an earlier operation left nothing walkable: flip more bytes
            m.flip(rng, 132, len(m.buf), 4)
            done.append("flip")
            continue
        present = {k: t for k, t in IMAGE_TAGS.items() if t in emap.elements}
        op = rng.choice(("vr", "odd", "enum", "dims", "text", "truncate", "flip", "length", "insert"))
        try:
            if op == "vr" and present and not emap.implicit:
                k = rng.choice(sorted(present))
                if present[k] >> 16 == 0x0002:
                    k = "Rows" if "Rows" in present else k
                vr = rng.choice(VRS)
                m.set_vr(present[k], vr)
                done.append(_desc(k, f"VR {vr!r}"))
            elif op == "odd" and present:
                k = rng.choice(sorted(present))
                e = emap.elements[present[k]]
                if e.length != 0xFFFFFFFF:
                    m.set_length(present[k], e.length + rng.choice((-1, 1, 3)))
                    done.append(_desc(k, "odd length"))
            elif op in ("enum", "dims"):
                k = rng.choice([t for t in US_TAGS if t in present] or ["Rows"])
                if k in present and emap.elements[present[k]].length == 2:
                    v = rng.choice(US_VALUES) if op == "enum" else rng.randrange(0, 65536)
                    m.set_us(present[k], v)
                    done.append(_desc(k, str(v)))
            elif op == "text":
                choices = [k for k in TEXT_VALUES if k in present]
                if choices:
                    k = rng.choice(choices)
                    v = rng.choice(TEXT_VALUES[k])
                    m.set_text(present[k], v)
                    done.append(_desc(k, repr(v)))
            elif op == "insert" and "Rows" in present:
                k = rng.choice(("VOILUTFunction", "NumberOfFrames", "WindowCenter"))
                if k not in present:
                    tag, vr = IMAGE_TAGS[k], {"VOILUTFunction": b"CS", "NumberOfFrames": b"IS", "WindowCenter": b"DS"}[k]
                    v = rng.choice(TEXT_VALUES[k]).encode("latin-1")
                    v += b" " * (len(v) % 2)
                    before = min((t for t in emap.elements if t > tag), default=None)
                    if before is not None:
                        m.insert_before(before, m.encode(tag, vr, v))
                        done.append(_desc(k, f"inserted {v!r}"))
            elif op == "truncate":
                at = rng.randrange(132, len(m.buf))
                m.truncate(at)
                done.append(f"truncated at {at}")
            elif op == "flip":
                end = emap.elements.get(0x7FE00010, dm.Element(0, None, len(m.buf), 0, 0, 0, 0)).header
                n = rng.randrange(1, 8)
                m.flip(rng, 132, end, n)
                done.append(f"{n} byte(s) flipped in the header")
            elif op == "length" and present:
                k = rng.choice(sorted(present))
                e = emap.elements[present[k]]
                big = 0xFFFF if e.length_size == 2 else rng.choice((0xFFFFFFF0, 0x7FFFFFFF, len(m.buf) * 4))
                m.set_length(present[k], big)
                done.append(_desc(k, f"length {big}"))
        except (KeyError, ValueError, IndexError):
            continue
    if not done:
        m.flip(rng, 132, len(m.buf), 2)
        done.append("2 byte(s) flipped")
    return bytes(m.buf), done


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """This address space's high-water mark (VmHWM). Not getrusage's ru_maxrss: that survives fork+exec,
    so a child of a large pytest process would report its parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run(count: int, seed: int, keep: Path | None = None) -> dict:
    from edge.sources import SourceStats
    from edge.sources.durable import DurableInbox
    from edge.sources.quarantine import Quarantine
    from tests.support.dicom_files import FILES

    by_name = {Path(f).name: Path(f) for f in FILES}
    seeds = [by_name[s] for s in SEEDS if s in by_name]
    if len(seeds) < len(SEEDS) // 2:
        raise SystemExit(f"only {len(seeds)} of the seed objects are installed (pip install pydicom-data)")
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="medge-fuzz-"))
    log = logging.getLogger("medge.fuzz")
    log.setLevel(logging.CRITICAL)  # thousands of refusal lines; the summary says what happened
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # as the daemon does (edge.runtime.daemon.setup_logging)
    stats = SourceStats()
    inbox = DurableInbox("fuzz", root / "processed", Quarantine(root / "quarantine", log), stats, log,
                         journal_dir=root / "attempts")
    stop = threading.Event()
    outcomes = {"decoded": 0, "quarantined": 0}
    escaped: list[dict] = []
    reasons: dict[str, int] = {}
    baseline = _rss_bytes()
    t0 = time.perf_counter()
    slowest = (0.0, "")
    try:
        for i in range(count):
            src = seeds[i % len(seeds)]
            with warnings.catch_warnings():  # the mutator's own UID parsing of broken meta warns
                warnings.simplefilter("ignore")
                data, ops = mutate(src, rng)
            path = root / "incoming" / f"m{i:05d}-{src.name}"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(data)
            t = time.perf_counter()
            try:
                for frame in inbox.frames(path, stop):
                    inbox.complete(frame, True)
            except Exception as e:  # what would have killed the source thread
                escaped.append({"mutant": path.name, "ops": ops, "error": f"{type(e).__name__}: {e}",
                                "trace": traceback.format_exc()[-1500:]})
                if keep:
                    keep.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, keep / path.name)
                continue
            dt = time.perf_counter() - t
            if dt > slowest[0]:
                slowest = (dt, f"{path.name} {ops}")
            if path.exists():
                escaped.append({"mutant": path.name, "ops": ops, "error": "left in incoming after processing"})
            elif (root / "processed" / path.name).exists():
                outcomes["decoded"] += 1
                (root / "processed" / path.name).unlink()
            else:
                outcomes["quarantined"] += 1
                why = stats.last_error or ""
                key = why.split(": ", 1)[-1].split(" (")[0][:60]
                reasons[key] = reasons.get(key, 0) + 1
        for p in (root / "quarantine").glob("*.reason.txt"):
            line = p.read_text().splitlines()[0]
            if "\n" in line or not line:
                escaped.append({"mutant": p.name, "error": "reason is not one line"})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    peak = peak_rss_bytes()
    return {"count": count, "seed": seed, "seeds": len(seeds), **outcomes, "escaped": escaped,
            "seconds": round(time.perf_counter() - t0, 1), "baseline_rss_mb": round(baseline / 2**20, 1),
            "peak_rss_mb": round(peak / 2**20, 1), "peak_growth_mb": round((peak - baseline) / 2**20, 1),
            "slowest": {"seconds": round(slowest[0], 3), "mutant": slowest[1]},
            "top_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:12])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.support.fuzz_headers")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="copy mutants that escaped here")
    a = ap.parse_args(argv)
    summary = run(a.count, a.seed, a.keep)
    print(json.dumps(summary), flush=True)
    return 1 if summary["escaped"] else 0


if __name__ == "__main__":
    sys.exit(main())
