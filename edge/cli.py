"""The `medge` command.

Each command is a thin wrapper: parse arguments, call one function in the module named for the job. A
`MedgeError` from any command (and from `medge export`) becomes one line on stderr and exit status 2, in
one place (`Commands.invoke`). Heavy modules are imported inside the commands so `medge --help` is
instant and a device without the export extra still runs everything but `medge export`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from edge.errors import MedgeError
from edge.link.topics import DEFAULT_GROUP, findings_filter


class Command(TyperCommand):
    """Usage lines name arguments the way manuals do (``medge inspect [OPTIONS] FILE``), not typer's ``{file}``."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        out = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = (p.metavar or (p.name or "arg").upper()) + ("..." if p.nargs != 1 else "")
                out.append(name if p.required else f"[{name}]")
            else:
                out.extend(p.get_usage_pieces(ctx))
        return out


class Commands(TyperGroup):
    """Every subcommand runs inside `invoke`: the one place a `MedgeError` becomes the error line."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        for cmd in self.commands.values():  # typer builds plain TyperCommands; give them medge's usage line
            if type(cmd) is TyperCommand:
                cmd.__class__ = Command

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MedgeError as e:
            for line in str(e).splitlines() or [type(e).__name__]:
                typer.echo(f"medge: error: {line}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=Commands,
    help="medge: edge inference for portable medical imaging (decision support, not a diagnosis).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(cls=Commands, help="Firmware profiles.", no_args_is_help=True, rich_markup_mode=None)
outbox_app = typer.Typer(cls=Commands, help="The durable findings outbox on this device.", no_args_is_help=True,
                         rich_markup_mode=None)
findings_app = typer.Typer(cls=Commands, help="What this device found, and whether the hospital has it.", no_args_is_help=True,
                           rich_markup_mode=None)
hospital_app = typer.Typer(cls=Commands, help="Hospital side: the broker configuration and the findings the receivers stored.",
                           no_args_is_help=True, rich_markup_mode=None)
hospital_findings_app = typer.Typer(cls=Commands, help="Findings in the receivers' database.", no_args_is_help=True,
                                    rich_markup_mode=None)
events_app = typer.Typer(cls=Commands, help="What this device reported besides findings (objects outside a model's "
                         "intended use, drift), and whether the hospital has it.", no_args_is_help=True, rich_markup_mode=None)
hospital_events_app = typer.Typer(cls=Commands, help="Device events in the receivers' database.", no_args_is_help=True,
                                  rich_markup_mode=None)


def _version(value: bool) -> None:
    if value:
        import onnxruntime

        from edge import __version__

        typer.echo(f"medge {__version__} (onnxruntime {onnxruntime.__version__}, python {sys.version.split()[0]})")
        raise typer.Exit()


@app.callback()
def _top(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                      help="print medge's version and exit")) -> None:
    """medge: edge inference for portable medical imaging (decision support, not a diagnosis)."""


app.add_typer(config_app, name="config")
app.add_typer(outbox_app, name="outbox")
app.add_typer(findings_app, name="findings")
app.add_typer(hospital_app, name="hospital")
hospital_app.add_typer(hospital_findings_app, name="findings")
app.add_typer(events_app, name="events")
hospital_app.add_typer(hospital_events_app, name="events")




@config_app.command("check")
def config_check(
    profile: Path = typer.Argument(..., help="firmware profile YAML"),
    structure_only: bool = typer.Option(
        False, "--structure-only", help="check keys, types and values only (on a workstation, not the device)"
    ),
) -> None:
    """Validate a profile: unknown keys, types, files, values and bundle signatures."""
    from edge.config import load_config, warnings_for
    from edge.inference.modelset import verify_models

    cfg = load_config(profile, check_files=not structure_only)
    verified, bundle_warnings = ([], []) if structure_only else verify_models(cfg)
    for line in verified:
        typer.echo(f"  {line}")
    for w in [*warnings_for(cfg), *bundle_warnings]:
        typer.echo(f"WARNING: {w}", err=True)
    typer.echo(f"{profile}: OK ({len(cfg.sources)} source(s), {len(cfg.models)} model(s), device {cfg.device.id})")


@app.command()
def run(
    config: Path = typer.Option(..., "--config", "-c", help="firmware profile YAML"),
    data_dir: Path | None = typer.Option(None, help="override the profile's data_dir"),
    max_seconds: float | None = typer.Option(None, help="stop after this many seconds (testing)"),
) -> None:
    """Run the on-device daemon until SIGTERM/SIGINT (or until every finite source is exhausted)."""
    from edge.config import load_config
    from edge.runtime.daemon import run_daemon

    cfg = load_config(config, data_dir=data_dir)
    code = run_daemon(cfg, max_seconds=max_seconds)
    raise typer.Exit(code)


@app.command()
def demo(
    data_dir: Path | None = typer.Option(None, help="where the demo keeps its outbox (default: the demo profile's, "
                                         "~/.local/share/medge/demo, started afresh each run)"),
    broker: str | None = typer.Option(None, "--broker", metavar="URL", help="also send the findings to this MQTT "
                                      "broker (e.g. mqtt://127.0.0.1:1883 with 'medge receive' on it)"),
) -> None:
    """Run the built-in demo: both reference models on bundled sample input, CPU only, no broker."""
    from edge.commands.demo import run_demo
    from hospital.relink import keygen

    raise typer.Exit(run_demo(data_dir, broker=broker, relink_keygen=keygen))


@app.command()
def replay(
    file: Path = typer.Argument(..., help="multi-frame DICOM, single DICOM or video file"),
    bundle: Path = typer.Option(..., "--bundle", "-b", help="model bundle folder"),
    variant: str | None = typer.Option(None, help="fp32 | int8 | fp16 (default: the bundle's)"),
    realtime: bool = typer.Option(True, "--realtime/--fast", help="play at the recorded frame rate or as fast as possible"),
    as_json: bool = typer.Option(False, "--json", help="print findings and the summary as JSON lines"),
    trusted_key: list[Path] = typer.Option([], "--trusted-key", help="require a signature by this public key (PEM); "
                                           "repeatable", metavar="PEM"),
    overlays: Path | None = typer.Option(None, "--overlays", help="write one overlay PNG per finding into this folder",
                                         metavar="DIR"),
    video: Path | None = typer.Option(None, "--video", help="write an annotated copy of a cine or video (every frame "
                                      "with its detections)", metavar="OUT.mp4"),
) -> None:
    """Run the device pipeline offline on one file and print findings and the latency summary."""
    from edge.commands.replay import replay_file

    raise typer.Exit(replay_file(file, bundle, variant=variant, realtime=realtime, as_json=as_json,
                                 trusted_keys=list(trusted_key), overlays_dir=overlays, video=video))


@app.command()
def bench(
    bundle: Path = typer.Option(..., "--bundle", "-b", help="model bundle folder", metavar="DIR"),
    variant: str | None = typer.Option(None, "--variant", help="int8 | fp32 | fp16 (default: the bundle's)",
                                       metavar="NAME"),
    providers: str = typer.Option("cpu", "--providers", help="providers to try in order, comma-separated, as in a "
                                  "profile's models[].providers (e.g. tensorrt,cuda,cpu)", metavar="LIST"),
    threads: int = typer.Option(2, "--threads", help="intra-op threads, as models[].intra_op_threads", metavar="N"),
    runs: int = typer.Option(100, "--runs", help="timed runs", metavar="N"),
    warmup: int = typer.Option(10, "--warmup", help="untimed runs first, after the backend's own warm-up", metavar="N"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    trusted_key: list[Path] = typer.Option([], "--trusted-key", help="require a signature by this public key (PEM); "
                                           "repeatable", metavar="PEM"),
) -> None:
    """Latency and throughput of a bundle on this device, through the backend the device would build."""
    from edge.commands.bench import bench_command

    raise typer.Exit(bench_command(bundle, variant, providers, threads, runs, warmup, as_json, list(trusted_key),
                                   echo=typer.echo))


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="DICOM or video file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    config: Path | None = typer.Option(None, "--config", "-c", help="firmware profile: also say which of its models "
                                       "would read the file (intended use) and why not"),
) -> None:
    """Show what the daemon would see in a file, and whether it would accept it."""
    from edge.commands.inspect import inspect_file

    raise typer.Exit(inspect_file(file, as_json=as_json, config=config))


@app.command()
def doctor(config: Path | None = typer.Option(None, "--config", "-c", help="firmware profile YAML")) -> None:
    """Check providers, GPU/TensorRT, bundles and signatures, disk, broker and clock; explain problems."""
    from edge.commands.doctor import run_doctor

    raise typer.Exit(run_doctor(config))


@app.command()
def receive(
    broker: str = typer.Option(..., help="mqtt://host:port or mqtts://host:port"),
    db: str = typer.Option(..., help="SQLite file path, or a postgresql:// URL"),
    group: str = typer.Option(DEFAULT_GROUP, help="shared-subscription group name"),
    topic: str = typer.Option(findings_filter(), help="findings topic filter; device events are read from the same "
                              "devices (.../findings/# becomes .../events/#)"),
    ca_file: Path | None = typer.Option(None, help="broker CA certificate (mqtts)"),
    cert_file: Path | None = typer.Option(None, help="client certificate"),
    key_file: Path | None = typer.Option(None, help="client private key"),
    client_id: str | None = typer.Option(None, help="MQTT client id (default: derived from host name)"),
    max_seconds: float | None = typer.Option(None, help="stop after this many seconds (testing)"),
) -> None:
    """Hospital-side receiver: store findings exactly once, acknowledging only after commit."""
    from hospital.receiver import ReceiverConfig, run_receiver

    cfg = ReceiverConfig(broker=broker, db=db, group=group, topic=topic, ca_file=ca_file, cert_file=cert_file,
                         key_file=key_file, client_id=client_id)
    raise typer.Exit(run_receiver(cfg, max_seconds=max_seconds))


def _profile_cfg(config: Path, data_dir: Path | None):
    """A profile for commands that only look: structure and values, not the device's files (reading the
    outbox must not depend on the bundles verifying)."""
    from edge.config import load_config

    return load_config(config, data_dir=data_dir, check_files=False)


def _outbox(config: Path, data_dir: Path | None = None):
    from edge.link.outbox import Outbox

    return Outbox.from_config(_profile_cfg(config, data_dir), create=False)


PROFILE = typer.Option(..., "--config", "-c", help="firmware profile YAML")
DATA_DIR = typer.Option(None, "--data-dir", help="override the profile's data_dir (e.g. the folder medge demo used)")
AS_JSON = typer.Option(False, "--json", help="print JSON")


@outbox_app.command("status")
def outbox_status(config: Path = PROFILE, data_dir: Path | None = DATA_DIR, as_json: bool = AS_JSON) -> None:
    """Findings by state (pending, at the broker, acknowledged by the hospital), oldest age, quota, drops."""
    import json

    with _outbox(config, data_dir) as ob:
        st = ob.status()
    typer.echo(json.dumps(st.to_dict(), indent=2) if as_json else st.describe())


@outbox_app.command("list")
def outbox_list(config: Path = PROFILE, data_dir: Path | None = DATA_DIR,
                limit: int = typer.Option(50, help="show at most this many")) -> None:
    """List the findings the hospital does not have yet, highest priority first."""
    with _outbox(config, data_dir) as ob:
        for row in ob.list_pending(limit):
            typer.echo(row.describe())


@outbox_app.command("retry")
def outbox_retry(config: Path = PROFILE, data_dir: Path | None = DATA_DIR) -> None:
    """Send again now every finding the hospital has not acknowledged (in flight or at the broker)."""
    with _outbox(config, data_dir) as ob:
        n = ob.retry_all(at_broker=True)
    typer.echo(f"{n} finding(s) re-queued")


@outbox_app.command("purge-expired")
def outbox_purge(config: Path = PROFILE, data_dir: Path | None = DATA_DIR) -> None:
    """Remove findings whose time-to-live has passed (counted and reported, never silent)."""
    with _outbox(config, data_dir) as ob:
        n = ob.purge_expired()
    typer.echo(f"{n} expired finding(s) purged")


@findings_app.command("list")
def findings_list(config: Path = PROFILE, data_dir: Path | None = DATA_DIR, as_json: bool = AS_JSON,
                  limit: int = typer.Option(50, help="show at most this many, newest first"),
                  state: list[str] = typer.Option([], "--state", metavar="STATE",
                                                  help="pending, in-flight, at-broker, acknowledged "
                                                  "(repeat for several; default all)")) -> None:
    """What this device found: label, confidence, modality, review flag, model and delivery state."""
    from edge.link.outbox import STATE_NAMES

    bad = [x for x in state if x not in STATE_NAMES.values()]
    if bad:
        raise _usage(f"--state {bad[0]!r}: use one of {', '.join(STATE_NAMES.values())}")
    with _outbox(config, data_dir) as ob:
        rows = ob.list_findings(limit, tuple(state) or None)
    _print_rows(rows, limit, as_json)


def _print_rows(rows: list, limit: int, as_json: bool, noun: str = "finding") -> None:
    """Device and hospital listings alike: one line each (or a JSON list), and whether more were cut off."""
    import json

    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    for r in rows:
        typer.echo(r.describe())
    typer.echo(f"{len(rows)} {noun}(s)" + (f" (newest {limit}; --limit for more)" if len(rows) == limit else ""))


@findings_app.command("show")
def findings_show(finding_id: str = typer.Argument(..., help="a finding id from 'medge findings list'"),
                  config: Path = PROFILE, data_dir: Path | None = DATA_DIR, as_json: bool = AS_JSON) -> None:
    """One finding in full while the device still holds it, and its delivery state."""
    import json

    from edge.errors import InputError

    with _outbox(config, data_dir) as ob:
        rows = ob.list_findings(1, finding_id=finding_id)
        item = ob.get(finding_id)
    if not rows:
        raise InputError(f"finding {finding_id}: not in this device's outbox (ids of acknowledged findings are kept "
                         "30 days)")
    doc = {"state": rows[0].to_dict(), "finding": json.loads(item.payload) if item and item.payload else None}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(rows[0].describe())
    if doc["finding"] is None:
        typer.echo("the hospital has acknowledged it; the device keeps only this summary (the full finding is in the "
                   "hospital's database: medge hospital findings show ID --db ...)")
    else:
        typer.echo(json.dumps(doc["finding"], indent=2))


@events_app.command("list")
def events_list(config: Path = PROFILE, data_dir: Path | None = DATA_DIR, as_json: bool = AS_JSON,
                limit: int = typer.Option(50, help="show at most this many, newest first")) -> None:
    """Device events (out of scope, drift): time, kind, reason, detail and delivery state."""
    with _outbox(config, data_dir) as ob:
        rows = ob.list_events(limit)
    _print_rows(rows, limit, as_json, noun="event")


@app.command()
def monitor(config: Path = PROFILE, data_dir: Path | None = DATA_DIR, as_json: bool = AS_JSON,
            png: Path | None = typer.Option(None, "--png", help="also draw reference vs recent distributions per "
                                            "source into this PNG", metavar="FILE")) -> None:
    """Drift per source and model: input intensity PSI against the bundle's reference, out-of-distribution frames."""
    from edge.commands.monitor import run_monitor

    raise typer.Exit(run_monitor(_profile_cfg(config, data_dir), png, as_json, typer.echo))


@app.command()
def sync(config: Path = PROFILE, data_dir: Path | None = DATA_DIR,
         once: bool = typer.Option(False, "--once", help="flush the outbox and exit"),
         timeout: float = typer.Option(120.0, help="give up after this many seconds")) -> None:
    """Send what the outbox holds to the hospital and wait for its acknowledgements (field maintenance;
    exit 0 when the hospital has everything, 1 when some stay in the outbox)."""
    from edge.config import load_config
    from edge.link.sync import flush

    if not once:
        raise _usage("medge sync only runs with --once; the daemon (medge run) syncs all the time")
    cfg = load_config(config, data_dir=data_dir)
    left, line = flush(cfg, timeout)
    typer.echo(line)
    raise typer.Exit(0 if left == 0 else 1)


@hospital_app.command("broker-config")
def broker_config(
    fleet: Path = typer.Argument(..., help="fleet inventory YAML (deploy/mosquitto/fleet.example.yaml)"),
    out: Path = typer.Option(..., "--out", help="folder to write mosquitto.conf and dynamic-security.json into"),
) -> None:
    """Render the mosquitto configuration that enforces medge's broker identity rules."""
    from hospital.broker import load_fleet, write_broker_config

    fl, settings = load_fleet(fleet)
    written = write_broker_config(fl, settings, out)
    for p in written:
        typer.echo(f"wrote {p}")
    typer.echo(f"{len(fl.devices)} device(s), {len(fl.receivers)} receiver(s), {len(fl.monitors)} monitor(s); "
               "restart mosquitto to apply")


@hospital_app.command("relink-keygen")
def relink_keygen(
    out: Path = typer.Option(..., "--out", help="folder for relink.key (private, stays at the hospital) and "
                             "relink.pub.pem (goes into every device profile as privacy.relink_public_key)"),
) -> None:
    """Make the hospital's re-link key pair: devices seal original study UIDs to it, only its holder opens them."""
    from hospital.relink import keygen

    kid = keygen(out / "relink.key", out / "relink.pub.pem")
    typer.echo(f"wrote {out / 'relink.key'} (private, mode 600: only the DICOM forwarder's host needs it)")
    typer.echo(f"wrote {out / 'relink.pub.pem'} (key id {kid}): set privacy.relink_public_key to it in device profiles")


HOSPITAL_DB = typer.Option(..., "--db", help="the receiver's SQLite file, or a postgresql:// URL")


@hospital_findings_app.command("list")
def hospital_findings_list(db: str = HOSPITAL_DB, as_json: bool = AS_JSON,
                           limit: int = typer.Option(50, help="show at most this many, newest first")) -> None:
    """What the receivers stored: label, confidence, modality, review flag, device and model."""
    from hospital.store import open_store

    store = open_store(db, create=False)
    try:
        rows = store.recent(limit)
    finally:
        store.close()
    _print_rows(rows, limit, as_json)


@hospital_findings_app.command("show")
def hospital_findings_show(finding_id: str = typer.Argument(...), db: str = HOSPITAL_DB, as_json: bool = AS_JSON) -> None:
    """One stored finding in full."""
    import json

    from hospital.store import stored_finding

    row = stored_finding(db, finding_id)
    typer.echo(json.dumps(row.to_dict(), indent=2) if as_json else row.describe() + "\n" +
               json.dumps(row.finding, indent=2))


RELINK_KEY = typer.Option([], "--relink-key", metavar="KEY", help="the hospital's re-link private key (PEM, from "
                          "medge hospital relink-keygen) that opens the findings' sealed original UIDs; repeatable "
                          "(key rotation)")
CALLING_AET = typer.Option("MEDGE", "--calling-aet", metavar="AET", help="medge's own AE title (the PACS must know it)")


def _hospital_logging() -> None:
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _need_highdicom() -> None:
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise _usage("DICOM output needs highdicom: pip install 'medge[hospital]'") from None


@hospital_app.command("dicom")
def hospital_dicom(
    db: str = HOSPITAL_DB,
    finding_id: str = typer.Option(..., "--finding", metavar="ID", help="a finding id from medge hospital findings list"),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="folder for <id>.sr.dcm (and <id>.sc.dcm with an overlay)"),
    relink_key: list[Path] = RELINK_KEY,
    pacs: str | None = typer.Option(None, "--pacs", metavar="AET@HOST:PORT", help="fill patient and study attributes "
                                    "by C-FIND from this PACS (default: left empty)"),
    calling_aet: str = CALLING_AET,
) -> None:
    """Write one stored finding as a DICOM SR (TID 1500) and its overlay as a Secondary Capture, in the original study."""
    _hospital_logging()
    _need_highdicom()
    from hospital.dicom.objects import dicom_files

    for p in dicom_files(db, finding_id, out, list(relink_key), pacs=pacs, calling_aet=calling_aet):
        typer.echo(str(p))


@hospital_app.command("forward")
def hospital_forward(
    db: str = HOSPITAL_DB,
    pacs: str = typer.Option(..., "--pacs", metavar="AET@HOST:PORT", help="the PACS to C-STORE into, e.g. "
                             "ORTHANC@127.0.0.1:4242"),
    relink_key: list[Path] = RELINK_KEY,
    calling_aet: str = CALLING_AET,
    queue: Path | None = typer.Option(None, "--queue", metavar="FILE", help="the forwarder's own durable state "
                                      "(default: <db>.forward.sqlite3 next to a SQLite receiver database; required "
                                      "with a postgresql:// --db)"),
    once: bool = typer.Option(False, "--once", help="send every pending finding once now and exit (1 if some are left)"),
    timeout: float = typer.Option(30.0, "--timeout", metavar="S", help="seconds per network step (connect, "
                                  "association, each response)"),
    max_seconds: float | None = typer.Option(None, "--max-seconds", hidden=True, help="stop after this many seconds (testing)"),
) -> None:
    """Follow the receivers' database and send each finding to the PACS as SR (+ SC) by C-STORE, exactly once."""
    _hospital_logging()
    _need_highdicom()
    from hospital.dicom.forwarder import ForwardConfig, forward_command
    from hospital.dicom.pacs import PacsAddress

    cfg = ForwardConfig(db=db, pacs=PacsAddress.parse(pacs), relink_keys=list(relink_key), calling_aet=calling_aet,
                        queue=queue, timeout_s=timeout)
    raise typer.Exit(forward_command(cfg, once=once, max_seconds=max_seconds))


@hospital_events_app.command("list")
def hospital_events_list(db: str = HOSPITAL_DB, as_json: bool = AS_JSON,
                         limit: int = typer.Option(50, help="show at most this many, newest first")) -> None:
    """What the receivers stored besides findings: kind, reason, detail, device and model."""
    from hospital.store import open_store

    store = open_store(db, create=False)
    try:
        rows = store.events(limit)
    finally:
        store.close()
    _print_rows(rows, limit, as_json, noun="event")


review_app = typer.Typer(cls=Commands, invoke_without_command=True, rich_markup_mode=None,
                         help="The review station: clinicians confirm or reject findings; agreement per model.")
app.add_typer(review_app, name="review")
REVIEW_DB = typer.Option(..., "--db", metavar="DB", help="the receiver's SQLite file, or a postgresql:// URL")
REVIEW_LISTEN = typer.Option("127.0.0.1:8080", "--listen", metavar="HOST:PORT", help="address to serve on (loopback "
                             "unless TLS is in front: docs/HOSPITAL.md)")
REVIEW_INSECURE = typer.Option(False, "--insecure-listen", help="allow a non-loopback --listen without TLS (passwords "
                               "and findings cross the network in clear)")
REVIEW_TLS_CERT = typer.Option(None, "--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (chain)")
REVIEW_TLS_KEY = typer.Option(None, "--tls-key", metavar="PEM", help="the certificate's private key")
REVIEW_REFRESH = typer.Option(30, "--refresh", metavar="S", help="seconds between worklist refreshes")


def _review_extra() -> None:
    try:
        import argon2  # noqa: F401
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise _usage(f"the review station needs the hospital extra ({e.name} missing): pip install 'medge[hospital]'") from None


def _review_serve(db: str, listen: str, insecure_listen: bool, tls_cert: Path | None, tls_key: Path | None,
                  refresh: int) -> None:
    _hospital_logging()
    _review_extra()
    from hospital.review.commands import serve

    raise typer.Exit(serve(db, listen, insecure_listen=insecure_listen, tls_cert=tls_cert, tls_key=tls_key,
                           refresh_s=refresh, echo=typer.echo))


@review_app.callback()
def review(ctx: typer.Context, db: str | None = typer.Option(None, "--db", metavar="DB", help="serve the review station on this "
                                                            "database (the same as medge review serve --db DB)"),
           listen: str = REVIEW_LISTEN, insecure_listen: bool = REVIEW_INSECURE, tls_cert: Path | None = REVIEW_TLS_CERT,
           tls_key: Path | None = REVIEW_TLS_KEY, refresh: int = REVIEW_REFRESH) -> None:
    """The review station: `medge review --db DB --listen 127.0.0.1:8080` serves it (as `serve`)."""
    if ctx.invoked_subcommand is not None:
        return
    if db is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _review_serve(db, listen, insecure_listen, tls_cert, tls_key, refresh)


@review_app.command("serve")
def review_serve(db: str = REVIEW_DB, listen: str = REVIEW_LISTEN, insecure_listen: bool = REVIEW_INSECURE,
                 tls_cert: Path | None = REVIEW_TLS_CERT, tls_key: Path | None = REVIEW_TLS_KEY,
                 refresh: int = REVIEW_REFRESH) -> None:
    """Serve the worklist, finding pages, verdicts and the agreement dashboard (login required)."""
    _review_serve(db, listen, insecure_listen, tls_cert, tls_key, refresh)


@review_app.command("add-user")
def review_add_user(name: str = typer.Argument(..., metavar="NAME", help="the user name to log in with"),
                    role: str = typer.Option(..., "--role", metavar="reviewer|admin", help="admins also manage users"),
                    db: str = REVIEW_DB) -> None:
    """Create a local account; the password is read from stdin (twice at a terminal), stored as an argon2 hash."""
    _review_extra()
    from hospital.review.commands import add_user

    typer.echo(add_user(db, name, role))


@review_app.command("report")
def review_report(db: str = REVIEW_DB,
                  since: str | None = typer.Option(None, "--since", metavar="DATE", help="findings acquired since this "
                                                   "date (2026-01-31) or ISO date-time"),
                  out: Path = typer.Option(..., "--out", metavar="REPORT.md", help="the Markdown report; the plot goes "
                                           "next to it (REPORT.png)")) -> None:
    """Agreement per model, site and device over time, as Markdown + PNG (what /audit shows)."""
    _review_extra()
    from hospital.review.commands import report

    for p in report(db, since, out):
        typer.echo(f"wrote {p}")


@review_app.command("export")
def review_export(db: str = REVIEW_DB,
                  since: str | None = typer.Option(None, "--since", metavar="DATE", help="verdicts recorded since this "
                                                   "date or ISO date-time")) -> None:
    """Print every verdict as a JSON line (finding_id, verdict, corrected_label, reviewer, time, ...)."""
    _review_extra()
    from hospital.review.commands import export_verdicts

    export_verdicts(db, since, sys.stdout)


def _usage(msg: str) -> typer.Exit:
    typer.echo(f"medge: error: {msg}", err=True)
    return typer.Exit(2)


@app.command(
    "export",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def export_cmd(ctx: typer.Context) -> None:
    """Workstation toolchain: quantize, sign, build-engine (needs: pip install 'medge[export]')."""
    try:
        from export.cli import app as export_app
    except ImportError as e:
        raise _usage(f"the export toolchain is not installed ({e.name} missing); run: pip install 'medge[export]'") from None
    export_app(args=list(ctx.args), prog_name="medge export")


def main() -> None:
    try:
        app(prog_name="medge")  # the same name in help whether started as medge or python -m edge.cli
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
