"""DICOM encodings of the synthetic images: CR radiographs and multi-frame ultrasound cines.

The device's sources read DICOM, not arrays, so the demo samples and the X-ray validation sets are
written as the objects a modality would send, with the tags the decoder depends on: photometric
interpretation, bits stored, VOI window, (imager) pixel spacing, and for ultrasound the frame timing and
the Sequence of Ultrasound Regions that locates the fan and gives its physical scale. Patient identity is
visibly fake. UIDs are derived from a seed so regenerated files are byte-identical.
"""

from __future__ import annotations

import datetime as dt

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from edge.frames import Region

from .synth_xray import BITS_STORED, XrayPhantom

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"
FAKE_PATIENT = "SYNTHETIC^PHANTOM^^^NOT A PATIENT"
ACQ = dt.datetime(2026, 1, 15, 10, 30, 0)


def uid(*parts: object) -> str:
    """Deterministic UID from the given parts (same inputs, same file)."""
    return generate_uid(entropy_srcs=["medge-synthetic", *[str(p) for p in parts]])


def _base(sop_class: str, sop_uid: str, modality: str, key: str, patient_id: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = uid(key, "study")
    ds.SeriesInstanceUID = uid(key, "series")
    ds.Modality = modality
    ds.PatientName = FAKE_PATIENT
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19000101"
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "NO"  # fake, but structured like an identified object: de-id must act
    ds.AccessionNumber = "SYN" + uid(key, "accession")[-8:]
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = ACQ.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = ACQ.strftime("%H%M%S")
    ds.Manufacturer = "medge synthetic"
    ds.InstitutionName = "SYNTHETIC DATA - NOT FOR CLINICAL USE"
    ds.StudyDescription = "SYNTHETIC PHANTOM - DEMONSTRATION ONLY"
    ds.ReferringPhysicianName = ""
    return ds


def cr_dataset(p: XrayPhantom, key: str, patient_id: str = "FAKE-CXR-0001") -> Dataset:
    """A CR Image Storage object holding the phantom's stored values, window and spacing."""
    ds = _base(CR_IMAGE_STORAGE, uid(key, "sop"), "CR", key, patient_id)
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.SeriesDescription = "Synthetic chest phantom"
    h, w = p.stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = p.photometric
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.ImagerPixelSpacing = [f"{p.spacing_mm[0]:.4f}", f"{p.spacing_mm[1]:.4f}"]
    ds.PixelSpacing = ds.ImagerPixelSpacing
    ds.WindowCenter = f"{p.window[0]:.1f}"
    ds.WindowWidth = f"{p.window[1]:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = np.ascontiguousarray(p.stored, dtype="<u2").tobytes()
    return ds


def us_multiframe_dataset(
    frames: np.ndarray,
    region: Region,
    spacing_mm: float,
    frame_rate: float,
    key: str,
    patient_id: str = "FAKE-US-0001",
    compression: str = "rle",
    jpeg_quality: int = 90,
) -> Dataset:
    """An Ultrasound Multi-frame Image Storage object (MONOCHROME2, 8-bit) with its fan region.

    compression: "rle" (lossless, exact pixels) or "jpeg" (baseline, lossy, smallest).
    """
    n, h, w = frames.shape
    ds = _base(US_MULTIFRAME_STORAGE, uid(key, "sop"), "US", key, patient_id)
    ds.SeriesDescription = "Synthetic FAST cine"
    ds.BodyPartExamined = "ABDOMEN"
    ds.BurnedInAnnotation = "YES"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = n
    ds.FrameTime = f"{1000.0 / frame_rate:.3f}"
    ds.CineRate = int(round(frame_rate))
    ds.RecommendedDisplayFrameRate = int(round(frame_rate))
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    reg = Dataset()
    reg.RegionSpatialFormat = 1  # 2D
    reg.RegionDataType = 1  # tissue
    reg.RegionFlags = 0
    reg.RegionLocationMinX0 = region.x0
    reg.RegionLocationMinY0 = region.y0
    reg.RegionLocationMaxX1 = region.x1 - 1  # DICOM max is inclusive
    reg.RegionLocationMaxY1 = region.y1 - 1
    reg.PhysicalUnitsXDirection = 3  # cm
    reg.PhysicalUnitsYDirection = 3
    reg.PhysicalDeltaX = spacing_mm / 10.0
    reg.PhysicalDeltaY = spacing_mm / 10.0
    ds.SequenceOfUltrasoundRegions = [reg]
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    if compression == "rle":
        ds.PixelData = frames.tobytes()
        ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    elif compression == "jpeg":
        chunks = []
        for f in frames:
            ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise ValueError("JPEG encoding failed")
            chunks.append(buf.tobytes())
        ds.PixelData = encapsulate(chunks)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = f"{frames.nbytes / sum(len(c) for c in chunks):.2f}"
    else:
        raise ValueError(f"compression must be 'rle' or 'jpeg', got {compression!r}")
    return ds
