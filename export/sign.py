"""Ed25519 keys and bundle signatures.

The signature covers the exact bytes of manifest.yaml, and the manifest holds the SHA-256 of every other
file, so one 64-byte signature pins the whole bundle. Private keys are written with 0600 permissions and
never into a bundle; only the public key travels to devices (profile ``trusted_keys``).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.durable_files import write_atomic
from edge.errors import BundleError, InputError
from edge.inference.bundle import MANIFEST, SIGNATURE, Bundle, key_fingerprint, load_bundle


def keygen(private_path: Path, public_path: Path | None = None, force: bool = False) -> tuple[Path, Path, str]:
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_name(private_path.name.removesuffix(".pem")
                                                                                 .removesuffix(".key") + ".pub.pem")
    for p in (private_path, public_path):
        if p.exists() and not force:
            raise InputError(f"{p}: key file already exists; refusing to overwrite it (pass --force)")
    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(private_path, priv, mode=0o600)  # never visible half-written or with wider permissions
    write_atomic(public_path, pub)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return private_path, public_path, key_fingerprint(raw)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise InputError(f"{path}: private key file not found") from None
    except (ValueError, TypeError) as e:
        raise InputError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{path}: signing key must be an Ed25519 private key")
    return key


def sign_bundle(root: Path, key_path: Path) -> str:
    """Verify the bundle's hashes, then write manifest.sig; returns the signing key's fingerprint."""
    root = Path(root)
    load_bundle(root)  # never sign a bundle whose files do not match its manifest
    key = load_private_key(key_path)
    data = (root / MANIFEST).read_bytes()
    write_atomic(root / SIGNATURE, key.sign(data))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key_fingerprint(raw)


def verify_bundle(root: Path, public_keys: list[Path]) -> Bundle:
    if not public_keys:
        raise BundleError(f"{root}: pass at least one --key PUBLIC.pem to verify the signature against")
    return load_bundle(root, trusted_keys=list(public_keys), require_signature=True)
