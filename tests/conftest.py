"""Fixtures shared across the suite (helpers that are not fixtures live in tests/support/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.bundles import write_bundle, write_public_key
from tests.support.mqtt_broker import Broker
from tests.support.postgres import pg_url, postgres_server, store_db  # noqa: F401 - fixtures: PostgreSQL, both stores


@dataclass(frozen=True)
class SignedBundle:
    key: Ed25519PrivateKey
    bundle: Path
    public_key: Path


@pytest.fixture(scope="module")
def signed_bundle(tmp_path_factory) -> SignedBundle:
    """A signed toy segmentation bundle that fires on display values above 0.3 (the SonoSite cine does)."""
    tmp = tmp_path_factory.mktemp("signed")
    key = Ed25519PrivateKey.generate()
    bundle = write_bundle(tmp / "bundle", key=key, postprocess={"min_area_px": 8}, std=0.6)
    return SignedBundle(key, bundle, write_public_key(tmp / "pub.pem", key))


@pytest.fixture
def broker(request, tmp_path):
    """A real mosquitto with the deployable configuration, devices d1 and d2 at site s1, one receiver and one
    monitor identity. Full logging (tests read the broker's debug lines) unless marked ``quiet_broker``."""
    verbose = request.node.get_closest_marker("quiet_broker") is None
    with Broker(tmp_path, devices={"d1": "s1", "d2": "s1"}, verbose=verbose) as b:
        yield b
