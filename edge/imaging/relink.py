"""The original study's UIDs, sealed to the hospital's key: how the hospital (and only it) re-links a finding.

Findings carry keyed pseudonyms (`edge.imaging.deid`), which the broker, monitoring subscribers and anyone
who copies a message can read but not reverse. To attach a DICOM SR and the overlay to the *original* study
in its PACS, the hospital needs the real Study/Series/SOP Instance UIDs. The device encrypts them with HPKE
(RFC 9180: X25519, HKDF-SHA256, ChaCha20-Poly1305, base mode) to the hospital's public key from the
profile (`privacy.relink_public_key`) and puts the ciphertext in the finding (`origin_sealed`). Only the
holder of the private key (the hospital's DICOM forwarder, `hospital.relink`) can open it; the device
itself cannot decrypt what it sealed. The HPKE `info` binds the ciphertext to the finding id, so a sealed
origin copied into another finding does not open. docs/ARCHITECTURE.md (Re-linking) has the threat model.

Wire form: ``medge.origin/1.<key id>.<base64url HPKE ciphertext>``; the key id (first 16 hex digits of the
SHA-256 of the raw public key) tells the hospital which of its keys to use after a rotation.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from edge.errors import ConfigError
from edge.frames import StudyRef

PREFIX = "medge.origin/1"


def suite() -> hpke.Suite:
    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


def info(finding_id: str) -> bytes:
    """HPKE info: the ciphertext opens only for the finding it was sealed into."""
    return f"{PREFIX}|{finding_id}".encode()


def key_id(public_key: X25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Origin:
    """The original DICOM identifiers of the object a finding was made on (hospital side only)."""

    study_uid: str
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None

    @classmethod
    def from_study(cls, s: StudyRef) -> Origin:
        return cls(s.study_uid or "", s.series_uid, s.sop_instance_uid, s.sop_class_uid)

    def to_bytes(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if v}, sort_keys=True).encode()


class OriginSealer:
    """Seals origins to one hospital public key (the device side: encrypt only)."""

    def __init__(self, public_key: X25519PublicKey) -> None:
        self.public_key = public_key
        self.key_id = key_id(public_key)

    @classmethod
    def load(cls, path: Path | str) -> OriginSealer:
        path = Path(path)
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the hospital's re-link key ({e.strerror})") from None
        except ValueError:
            raise ConfigError(f"{path}: not a PEM public key (expected the hospital's X25519 key from "
                              "`medge hospital relink-keygen`)") from None
        if not isinstance(key, X25519PublicKey):
            raise ConfigError(f"{path}: the hospital's re-link key must be X25519, got {type(key).__name__}")
        return cls(key)

    def seal(self, origin: Origin, finding_id: str) -> str:
        ct = suite().encrypt(origin.to_bytes(), self.public_key, info=info(finding_id))
        return f"{PREFIX}.{self.key_id}.{base64.urlsafe_b64encode(ct).decode('ascii').rstrip('=')}"

    def seal_study(self, study: StudyRef | None, finding_id: str) -> str | None:
        return self.seal(Origin.from_study(study), finding_id) if study is not None and study.study_uid else None
