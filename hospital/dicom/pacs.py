"""The PACS as a DICOM peer: C-FIND for the study's patient attributes, C-STORE of medge's objects (pynetdicom).

One association carries both (Study Root Query/Retrieve FIND, Comprehensive 3D SR and Secondary Capture
storage). Every network step has a timeout (connect, association, DIMSE response, idle network), so a PACS
that hangs costs at most ``timeout_s`` per step, never a stuck forwarder. Failures raise `PacsError` with one
line naming the PACS and the cause; a C-STORE that the PACS answers returns its status for the caller to
judge (only 0x0000 counts as stored).
"""

from __future__ import annotations

import logging
import re
import socket
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
)

from edge.errors import ConfigError, MedgeError
from hospital.dicom.study import KEYWORDS, StudyAttributes

log = logging.getLogger("medge.pacs")

_ADDRESS = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5: 16 characters of the default repertoire, no backslash
SUCCESS = 0x0000
PENDING = (0xFF00, 0xFF01)


class PacsError(MedgeError):
    """The PACS cannot be reached, refuses the association, or stops answering."""


def check_aet(aet: str, what: str) -> str:
    if not _AET.match(aet) or not aet.strip():
        raise ConfigError(f"{what} {aet!r}: an AE title is 1-16 printable ASCII characters without a backslash")
    return aet


@dataclass(frozen=True)
class PacsAddress:
    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PacsAddress:
        m = _ADDRESS.match(text.strip())
        if not m or not 0 < int(m["port"]) < 65536:
            raise ConfigError(f"--pacs {text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
        return cls(check_aet(m["aet"], "--pacs AE title"), m["host"].strip("[]"), int(m["port"]))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


def _status(ds: Any) -> int | None:
    return int(ds.Status) if ds is not None and "Status" in ds else None


class Pacs:
    """One association with the PACS (use as a context manager; it is released on exit)."""

    def __init__(self, address: PacsAddress, calling_aet: str = "MEDGE", timeout_s: float = 30.0) -> None:
        self.address = address
        self.calling_aet = check_aet(calling_aet, "--calling-aet")
        self.ae = AE(ae_title=self.calling_aet)
        for attr in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(self.ae, attr, timeout_s)
        self.ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            self.ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.assoc: Any = None

    def __enter__(self) -> Pacs:
        a = self.address
        assoc = self.ae.associate(a.host, a.port, ae_title=a.aet)
        if not assoc.is_established:
            if assoc.is_rejected:
                why = (f"rejected the association from {self.calling_aet} (is {self.calling_aet} a known modality there, "
                       f"and is its AE title {a.aet}?)")
            else:
                why = _unreachable(a, self.ae.connection_timeout) or "aborted the association"
            raise PacsError(f"PACS {a}: {why}")
        self.assoc = assoc
        return self

    def __exit__(self, *exc: object) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None

    def _alive(self) -> Any:
        if self.assoc is None or not self.assoc.is_established:
            raise PacsError(f"PACS {self.address}: the association was lost (PACS stopped or aborted)")
        return self.assoc

    def find_study(self, study_uid: str) -> StudyAttributes | None:
        """The study's patient and study attributes, or None when the PACS does not hold the study."""
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid
        for keyword in KEYWORDS:
            setattr(q, keyword, None)
        found: StudyAttributes | None = None
        final = None
        for status, identifier in self._alive().send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
            code = _status(status)
            if code in PENDING and identifier is not None and found is None:
                found = StudyAttributes.from_dataset(identifier, source=f"pacs {self.address}")
            final = code
        if final is None:
            raise PacsError(f"PACS {self.address}: no answer to the C-FIND for the study (timeout or aborted)")
        if final not in (SUCCESS, *PENDING):
            raise PacsError(f"PACS {self.address}: C-FIND failed with status 0x{final:04X}")
        return found

    def store(self, ds: Dataset) -> int:
        """C-STORE one object; the PACS's status (0x0000 stored, 0xB... warnings, 0xA.../0xC... failures)."""
        status = _status(self._alive().send_c_store(ds))
        if status is None:
            raise PacsError(f"PACS {self.address}: no answer to the C-STORE of {ds.SOPInstanceUID} (timeout or aborted)")
        return status


def _unreachable(a: PacsAddress, timeout_s: float) -> str | None:
    """Why a TCP connection to the PACS fails, or None when it connects (pynetdicom reports both as an abort)."""
    try:
        with socket.create_connection((a.host, a.port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"cannot be reached (no answer within {timeout_s:g} s: down, or a firewall)"
    except OSError as e:
        return f"cannot be reached ({e.strerror or type(e).__name__}: down, wrong host or port, or a firewall)"


def quiet_pynetdicom() -> None:
    """pynetdicom logs every refused connection as an error with a traceback; medge reports its own one line."""
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
