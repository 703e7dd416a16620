"""Findings produced by the real decoders validate against the versioned JSON Schema in the package."""

import json
from importlib import resources

import jsonschema
import numpy as np
import pytest

from edge.events import EVENT_KINDS, DeviceEvent, event_id
from edge.findings import Finding, ModelRef, iso_utc
from edge.frames import Frame, Region, StudyRef
from edge.inference.bundle import load_bundle
from edge.inference.preprocess import Preprocessor
from edge.inference.tasks import build_task
from edge.inference.tasks.overlay import OverlayPolicy
from edge.runtime.finding_builder import FindingBuilder, deterministic_id
from tests.support.bundles import blob_image, write_bundle


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(resources.files("edge").joinpath("schemas/finding.v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _finding(tmp_path, live=False) -> Finding:
    import onnxruntime as ort

    b = load_bundle(write_bundle(tmp_path / "b"))
    sess = ort.InferenceSession(str(b.model_path()), providers=["CPUExecutionProvider"])
    f = Frame(pixels=blob_image(), modality="US", source="cine", spacing_mm=(0.3, 0.3), region=Region(0, 0, 128, 128),
              study=StudyRef("1.2.3", "1.2.3.4", "1.2.3.4.5"), live=live)
    x, g = Preprocessor(b.manifest.preprocess).apply(f)
    (det,) = build_task(b.manifest, overlays=True).decode({"logits": sess.run(None, {"input": x})[0]}, g, f)
    builder = FindingBuilder("cart-7", ModelRef(b.manifest.name, b.manifest.version, b.model_sha256(), "fp32"),
                             pseudonymize=lambda s: ("P-" + s.study_uid[-1], "P-s", "P-i"), overlays=OverlayPolicy())
    return builder.build(det, f, 12.5, frame_range=(3, 7) if live else None)


def test_real_finding_validates_and_round_trips(tmp_path, validator):
    fd = _finding(tmp_path)
    d = json.loads(fd.to_json())
    validator.validate(d)
    assert d["study_id"] == "P-3" and "1.2.3" not in json.dumps({k: v for k, v in d.items() if k != "overlay_png_b64"})
    assert d["overlay_png_b64"] and d["measurements"]["area_mm2"] > 0 and d["priority"] == "urgent"
    assert Finding.from_json(fd.to_json()) == fd
    # stored object: deterministic id so a re-processed file deduplicates
    assert d["finding_id"] == deterministic_id("cart-7", "1.2.3.4.5", fd.model.sha256, "free_fluid")


def test_live_event_validates_with_random_id(tmp_path, validator):
    fd = _finding(tmp_path, live=True)
    validator.validate(fd.to_dict())
    assert fd.frame_range == (3, 7) and fd.finding_id != _finding(tmp_path / "again", live=True).finding_id


@pytest.mark.parametrize("field,value", [("confidence", 1.5), ("priority", "asap"), ("finding_id", "x"),
                                         ("model", {"name": "m", "version": "1", "sha256": "zz"}),
                                         ("patient_name", "DOE^JOHN")])
def test_schema_rejects_bad_findings(tmp_path, validator, field, value):
    d = _finding(tmp_path).to_dict()
    d[field] = value
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(d)


def test_minimal_finding_validates(validator):
    f = Finding("d", "CR", ModelRef("m", "1", "a" * 64), "opacity", 0.7, False)
    validator.validate(f.to_dict())
    assert np.isclose(f.to_dict()["confidence"], 0.7)


@pytest.fixture(scope="module")
def event_validator():
    schema = json.loads(resources.files("edge").joinpath("schemas/event.v1.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["kind"]["enum"] == list(EVENT_KINDS)  # one list of kinds, in the code
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def _event(kind: str, **kw) -> DeviceEvent:
    return DeviceEvent(device_id="cart-7", kind=kind, reason="modality" if kind == "out_of_scope" else "intensity_psi",
                       detail="one line an operator can act on", **kw)


@pytest.mark.parametrize("kind", list(EVENT_KINDS))
def test_device_events_of_each_kind_validate(event_validator, kind):
    full = _event(kind, model=ModelRef("m", "1", "a" * 64, "int8"), source="cine", modality="US", priority="routine",
                  study_id="P-1", series_id="P-s", instance_id="P-i", acquired_at=iso_utc(0),
                  measurements={"psi": 0.41, "frames": 120.0},
                  event_id=event_id("cart-7", "1.2.3.4.5", "a" * 64, kind))
    for e in (full, _event(kind)):  # every field, and only what is required (random uuid4 id)
        event_validator.validate(e.to_dict())
        assert DeviceEvent.from_dict(json.loads(e.to_json())) == e


@pytest.mark.parametrize("field,value", [("kind", "finding"), ("priority", "asap"), ("event_id", "x"), ("detail", ""),
                                         ("schema", "medge.finding/1"), ("label", "opacity"), ("patient_name", "DOE^JOHN")])
def test_schema_rejects_bad_events(event_validator, field, value):
    d = _event("drift").to_dict()
    d[field] = value
    with pytest.raises(jsonschema.ValidationError):
        event_validator.validate(d)
