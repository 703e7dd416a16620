"""Opening a finding's sealed origin: the hospital's half of `edge.imaging.relink`.

Only the process that writes DICOM into the PACS (`medge hospital dicom`, `medge hospital forward`) holds
the private key; receivers, the broker and the review station never need it, so a finding database or a
broker capture that leaks shows pseudonyms and ciphertext only. Several keys may be loaded (rotation): the
key id in the sealed string picks one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.durable_files import write_atomic
from edge.errors import ConfigError, MedgeError
from edge.imaging.relink import PREFIX, Origin, info, key_id, suite


class RelinkError(MedgeError):
    """A finding cannot be attached to its original study (no sealed origin, or a key that does not open it)."""


def keygen(private_path: Path | str, public_path: Path | str) -> str:
    """A new X25519 pair: the private key (mode 0600) stays at the hospital, the public one goes into every
    device profile (`privacy.relink_public_key`). Returns the key id. Refuses to overwrite a private key:
    findings sealed to it could no longer be opened."""
    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.exists():
        raise ConfigError(f"{private_path}: exists; a new key would orphan every finding sealed to the old one "
                          "(keep it, or move it away first)")
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_atomic(private_path, pem, mode=0o600, make_parents=True)
    write_atomic(public_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo), make_parents=True)
    return key_id(key.public_key())


@dataclass
class OriginOpener:
    keys: dict[str, X25519PrivateKey]

    @classmethod
    def load(cls, *paths: Path | str) -> OriginOpener:
        keys = {}
        for path in map(Path, paths):
            try:
                if path.stat().st_mode & 0o077:
                    raise ConfigError(f"{path}: the re-link private key is readable by others; chmod 600 it")
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except OSError as e:
                raise ConfigError(f"{path}: cannot read the re-link private key ({e.strerror})") from None
            except (ValueError, TypeError):
                raise ConfigError(f"{path}: not an unencrypted PEM private key (make one with "
                                  "`medge hospital relink-keygen`)") from None
            if not isinstance(key, X25519PrivateKey):
                raise ConfigError(f"{path}: the re-link key must be X25519, got {type(key).__name__}")
            keys[key_id(key.public_key())] = key
        if not keys:
            raise ConfigError("no re-link private key given")
        return cls(keys)

    def open(self, finding: dict[str, Any]) -> Origin:
        fid = str(finding.get("finding_id", "?"))
        sealed = finding.get("origin_sealed")
        if not sealed:
            raise RelinkError(f"finding {fid}: carries no sealed origin (the device profile has no "
                              "privacy.relink_public_key, or the finding is from live video without a study)")
        sealed = str(sealed)
        kid, _, body = sealed[len(PREFIX) + 1:].partition(".") if sealed.startswith(PREFIX + ".") else ("", "", "")
        if not kid or not body:
            raise RelinkError(f"finding {fid}: sealed origin is not in the {PREFIX} format")
        key = self.keys.get(kid)
        if key is None:
            raise RelinkError(f"finding {fid}: sealed to key {kid}, which is not among the loaded keys "
                              f"({', '.join(self.keys)})")
        try:
            ct = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = suite().decrypt(ct, key, info=info(fid))
        except Exception:  # InvalidTag, bad base64, short input: all mean "not this finding's origin"
            raise RelinkError(f"finding {fid}: sealed origin does not open with key {kid} (altered, or copied "
                              "from another finding)") from None
        d = json.loads(plain)
        return Origin(d["study_uid"], d.get("series_uid"), d.get("sop_instance_uid"), d.get("sop_class_uid"))

