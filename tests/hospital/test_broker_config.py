"""The deployable broker configuration (hospital.broker) and `medge doctor`'s check of it, on a real mosquitto."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from edge.commands.doctor import check_broker_identity
from edge.config import load_config
from edge.errors import ConfigError
from edge.link.mqtt import new_client, parse_broker_url
from hospital.broker import dynsec_config, load_fleet, mosquitto_conf
from tests.support import ROOT
from tests.support.mqtt_broker import Broker, device_profile

EXAMPLE = ROOT / "deploy" / "mosquitto"


def test_the_committed_example_is_what_broker_config_renders(tmp_path):
    fleet, settings = load_fleet(EXAMPLE / "fleet.example.yaml")
    assert (EXAMPLE / "mosquitto.conf").read_text() == mosquitto_conf(settings)
    assert json.loads((EXAMPLE / "dynamic-security.json").read_text()) == dynsec_config(fleet)
    conf = mosquitto_conf(settings)
    for rule in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true",
                 "allow_anonymous false", "plugin_opt_config_file"):
        assert rule in conf
    from typer.testing import CliRunner

    from edge.cli import app

    r = CliRunner().invoke(app, ["hospital", "broker-config", str(EXAMPLE / "fleet.example.yaml"), "--out", str(tmp_path)])
    assert r.exit_code == 0 and "3 device(s), 2 receiver(s)" in r.output
    assert (tmp_path / "dynamic-security.json").stat().st_mode & 0o777 == 0o640
    roles = {r["rolename"]: {(a["acltype"], a["topic"]) for a in r["acls"]} for r in dynsec_config(fleet)["roles"]}
    assert ("publishClientSend", "medge/st-elsewhere-ed/pocus-cart-01/events/#") in roles["medge-device-pocus-cart-01"]
    assert {("subscribePattern", "$share/medge-receivers/medge/+/+/events/#"),
            ("publishClientReceive", "medge/+/+/events/#")} <= roles["medge-receiver"]


def test_fleet_inventory_errors_name_the_problem(tmp_path):
    def fleet(doc: dict) -> Path:
        p = tmp_path / "fleet.yaml"
        p.write_text(yaml.safe_dump(doc))
        return p

    broker = {"cafile": "ca", "certfile": "c", "keyfile": "k"}
    with pytest.raises(ConfigError, match="device 'cart-1' is listed at 's1' and 's2'"):
        load_fleet(fleet({"sites": {"s1": ["cart-1"], "s2": ["cart-1"]}, "receivers": ["rx"], "broker": broker}))
    with pytest.raises(ConfigError, match="rx listed twice; every certificate identity has one role"):
        load_fleet(fleet({"sites": {"s1": ["rx"]}, "receivers": ["rx"], "broker": broker}))
    with pytest.raises(ConfigError, match=r"device 'a/b'.*cannot be part of an MQTT topic"):
        load_fleet(fleet({"sites": {"s1": ["a/b"]}, "receivers": ["rx"], "broker": broker}))
    with pytest.raises(ConfigError, match="broker: .*unexpected keyword argument 'prot'"):
        load_fleet(fleet({"sites": {"s1": ["a"]}, "receivers": ["rx"], "broker": {**broker, "prot": 1}}))


def _subscribe(b: Broker, identity: str, topic: str) -> list[str]:
    url = parse_broker_url(b.url)
    c = new_client(f"{identity}-probe", url, b.ca, b.cert(identity), b.key(identity))
    got: list[str] = []
    done = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_subscribe = lambda cl, u, mid, rcs, p: (got.extend(str(r) for r in rcs), done.set())
    c.connect(url.host, url.port)
    c.loop_start()
    try:
        assert done.wait(10)
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def test_roles_on_a_real_broker(tmp_path):
    with Broker(tmp_path, devices={"d1": "s1", "d2": "s1"}, verbose=False) as b:
        group = "$share/medge-receivers/medge/+/+/findings/#"
        assert _subscribe(b, "receiver", group) == ["Granted QoS 1"]
        assert _subscribe(b, "monitor", "#") == ["Granted QoS 1"]
        assert _subscribe(b, "monitor", group) == ["Not authorized"]  # a tap may not take findings from receivers
        assert _subscribe(b, "d1", "medge/s1/d1/ack") == ["Granted QoS 1"]
        assert _subscribe(b, "d1", "medge/s1/d2/ack") == ["Not authorized"]
        assert _subscribe(b, "d1", group) == ["Not authorized"]
        events = "$share/medge-receivers/medge/+/+/events/#"  # device events travel the same way
        assert _subscribe(b, "receiver", events) == ["Granted QoS 1"]
        assert _subscribe(b, "monitor", events) == ["Not authorized"] and _subscribe(b, "d1", events) == ["Not authorized"]
        assert _subscribe(b, "monitor", "medge/+/+/events/#") == ["Granted QoS 1"]
        b.add_identity("stranger")  # a valid certificate the fleet does not list
        assert _subscribe(b, "stranger", "medge/s1/d1/ack") == ["Not authorized"]


def test_doctor_checks_the_identity_rules_with_the_devices_own_certificate(tmp_path):
    with Broker(tmp_path / "good", devices={"d1": "s1"}, verbose=False) as b:
        cfg = load_config(device_profile(tmp_path / "good", b, "d1"))
        checks = {c.what: c for c in check_broker_identity(cfg)}
    assert checks["broker identity"].status == "OK" and "certificate identity as client id" in checks["broker identity"].detail
    assert checks["broker ACL"].status == "OK"

    # a broker configured the way the fault harness found it: client ids honoured, ACL without subscription checks
    weak = Broker(tmp_path / "weak", devices={"d1": "s1"}, verbose=False)
    acl = weak.folder / "acl"
    acl.write_text("user receiver\ntopic read medge/#\n\nuser d1\ntopic write medge/s1/d1/#\ntopic read medge/s1/d1/ack\n")
    conf = weak.conf_file.read_text().replace("use_username_as_clientid true\n", "")
    conf = "\n".join(ln for ln in conf.splitlines() if not ln.startswith("plugin")) + f"\nacl_file {acl}\n"
    weak.conf_file.write_text(conf)
    with weak:
        cfg = load_config(device_profile(tmp_path / "weak", weak, "d1"))
        checks = {c.what: c for c in check_broker_identity(cfg)}
        log = weak.log()
    assert checks["broker identity"].status == "WARN" and "take over another client's session" in checks["broker identity"].detail
    assert checks["broker ACL"].status == "WARN" and "$share/medge-receivers" in checks["broker ACL"].detail
    assert log.count("medge-doctor-") >= 2  # the made-up ids were used as given
