"""Re-linking: original UIDs travel HPKE-sealed to the hospital's key, bound to their finding; only the
hospital's private key opens them, and nothing readable on the wire or in the receiver's store names them."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.sr.codedict import codes

from edge.config import load_config
from edge.errors import ConfigError
from edge.findings import ModelRef
from edge.frames import Frame, StudyRef
from edge.imaging.relink import Origin, OriginSealer
from edge.inference.bundle import load_bundle
from edge.inference.tasks.base import Detection
from edge.runtime.finding_builder import FindingBuilder
from hospital.relink import OriginOpener, RelinkError, keygen

ROOT = Path(__file__).resolve().parents[2]
STUDY = StudyRef("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3",
                 patient_id="PAT-77", sop_class_uid="1.2.840.10008.5.1.4.1.1.1")


@pytest.fixture
def keys(tmp_path):
    keygen(tmp_path / "relink.key", tmp_path / "relink.pub.pem")
    return tmp_path / "relink.key", tmp_path / "relink.pub.pem"


def _finding(pub: Path):
    frame = Frame(pixels=np.zeros((8, 8), np.uint8), modality="CR", source="inbox", study=STUDY)
    b = FindingBuilder("cart-1", ModelRef("m", "1", "0" * 64), pseudonymize=lambda s: ("2.25.1", "2.25.2", "2.25.3"),
                       sealer=OriginSealer.load(pub))
    return b.build(Detection("nodule", 0.9, True, False), frame, 3.0)


def test_only_the_hospital_key_opens_the_origin_of_its_own_finding(keys, tmp_path):
    priv, pub = keys
    f = _finding(pub)
    wire = f.to_json()
    for uid in (STUDY.study_uid, STUDY.series_uid, STUDY.sop_instance_uid, STUDY.patient_id):
        assert uid not in wire  # what the broker, a monitor or the receiver's table sees
    o = OriginOpener.load(priv).open(json.loads(wire))
    assert o == Origin(STUDY.study_uid, STUDY.series_uid, STUDY.sop_instance_uid, STUDY.sop_class_uid)
    assert (priv.stat().st_mode & 0o777) == 0o600
    moved = {**json.loads(wire), "finding_id": "00000000-0000-4000-8000-000000000000"}  # copied into another finding
    with pytest.raises(RelinkError, match="does not open"):
        OriginOpener.load(priv).open(moved)
    keygen(tmp_path / "other" / "relink.key", tmp_path / "other" / "relink.pub.pem")
    with pytest.raises(RelinkError, match="not among the loaded keys"):
        OriginOpener.load(tmp_path / "other" / "relink.key").open(json.loads(wire))
    tampered = json.loads(wire)
    s = tampered["origin_sealed"]
    tampered["origin_sealed"] = s[:-4] + ("BBBB" if s.endswith("AAAA") else "AAAA")
    with pytest.raises(RelinkError, match="does not open"):
        OriginOpener.load(priv).open(tampered)
    with pytest.raises(RelinkError, match="no sealed origin"):
        OriginOpener.load(priv).open({"finding_id": "x"})
    # two keys loaded (rotation): the key id picks the right one
    assert OriginOpener.load(tmp_path / "other" / "relink.key", priv).open(json.loads(wire)).study_uid == STUDY.study_uid


def test_keys_are_refused_with_one_line_when_wrong(keys, tmp_path):
    priv, pub = keys
    with pytest.raises(ConfigError, match="exists"):
        keygen(priv, tmp_path / "x.pub")  # never overwrite: findings sealed to it would be orphaned
    os.chmod(priv, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        OriginOpener.load(priv)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = tmp_path / "ed.pub.pem"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="must be X25519"):
        OriginSealer.load(ed)
    prof = yaml.safe_load((ROOT / "firmware_configs/demo.yaml").read_text())
    prof["privacy"] = {"relink_public_key": str(ed)}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(prof))
    with pytest.raises(ConfigError) as e:
        load_config(p, data_dir=tmp_path / "data")
    assert "privacy.relink_public_key" in str(e.value) and "X25519" in str(e.value)


def test_reference_label_codes_are_real_snomed_concepts():
    """A code in a manifest is what a PACS and a registry will file the finding under: check it against
    pydicom's SNOMED CT table instead of trusting a hand-typed number."""
    concepts = [getattr(codes.SCT, n, None) for n in dir(codes.SCT) if n[:1].isupper()]
    by_value = {c.value: c.meaning for c in concepts if hasattr(c, "value")}
    seen = 0
    for manifest in (ROOT / "models/bundles").glob("*/manifest.yaml"):
        for label, c in load_bundle(manifest.parent).manifest.codes.items():
            if c["scheme"] == "SCT":
                assert by_value.get(c["value"]) == c["meaning"], f"{manifest.parent.name}: {label}: {c}"
                seen += 1
    assert seen >= 1
