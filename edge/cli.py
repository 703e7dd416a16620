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
from typer.core import TyperGroup

from edge.errors import MedgeError
from edge.link.topics import DEFAULT_GROUP, findings_filter


class Commands(TyperGroup):
    """Every subcommand runs inside `invoke`: the one place a `MedgeError` becomes the error line."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MedgeError as e:
            typer.echo(f"medge: error: {e}", err=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=Commands,
    help="medge: edge inference for portable medical imaging (decision support, not a diagnosis).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
config_app = typer.Typer(help="Firmware profiles.", no_args_is_help=True, rich_markup_mode=None)
outbox_app = typer.Typer(help="The durable findings outbox on this device.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(config_app, name="config")
app.add_typer(outbox_app, name="outbox")


def fail(msg: str, code: int = 2) -> typer.Exit:
    typer.echo(f"medge: error: {msg}", err=True)
    return typer.Exit(code)


@config_app.command("check")
def config_check(
    profile: Path = typer.Argument(..., help="firmware profile YAML"),
    structure_only: bool = typer.Option(
        False, "--structure-only", help="check keys, types and values only (on a workstation, not the device)"
    ),
) -> None:
    """Validate a profile: unknown keys, types, files, values and bundle signatures."""
    from edge.config import load_config
    from edge.inference.modelset import verify_models

    cfg = load_config(profile, check_files=not structure_only)
    verified = [] if structure_only else verify_models(cfg)
    for line in verified:
        typer.echo(f"  {line}")
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
    data_dir: Path | None = typer.Option(None, help="where the demo keeps its outbox (default: a new temp folder)"),
) -> None:
    """Run the built-in demo: both reference models on bundled sample input, CPU only, no broker."""
    from edge.commands.demo import run_demo

    raise typer.Exit(run_demo(data_dir))


@app.command()
def replay(
    file: Path = typer.Argument(..., help="multi-frame DICOM, single DICOM or video file"),
    bundle: Path = typer.Option(..., "--bundle", "-b", help="model bundle folder"),
    variant: str | None = typer.Option(None, help="fp32 | int8 | fp16 (default: the bundle's)"),
    realtime: bool = typer.Option(True, "--realtime/--fast", help="play at the recorded frame rate or as fast as possible"),
    as_json: bool = typer.Option(False, "--json", help="print findings and the summary as JSON lines"),
    trusted_key: list[Path] = typer.Option([], "--trusted-key", help="require a signature by this public key"),
) -> None:
    """Run the device pipeline offline on one file and print findings and the latency summary."""
    from edge.commands.replay import replay_file

    raise typer.Exit(replay_file(file, bundle, variant=variant, realtime=realtime, as_json=as_json,
                                 trusted_keys=list(trusted_key)))


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="DICOM or video file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show what the daemon would see in a file, and whether it would accept it."""
    from edge.commands.inspect import inspect_file

    raise typer.Exit(inspect_file(file, as_json=as_json))


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
    topic: str = typer.Option(findings_filter(), help="topic filter"),
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


@app.command("broker-config")
def broker_config(
    fleet: Path = typer.Argument(..., help="fleet inventory YAML (deploy/mosquitto/fleet.example.yaml)"),
    out: Path = typer.Option(..., "--out", help="folder to write mosquitto.conf and dynamic-security.json into"),
) -> None:
    """Hospital side: render the mosquitto configuration that enforces medge's broker identity rules."""
    from hospital.broker import load_fleet, write_broker_config

    fl, settings = load_fleet(fleet)
    written = write_broker_config(fl, settings, out)
    for p in written:
        typer.echo(f"wrote {p}")
    typer.echo(f"{len(fl.devices)} device(s), {len(fl.receivers)} receiver(s), {len(fl.monitors)} monitor(s); "
               "restart mosquitto to apply")


def _outbox(config: Path):
    from edge.config import load_config
    from edge.link.outbox import Outbox

    cfg = load_config(config)
    return Outbox.from_config(cfg)


@outbox_app.command("status")
def outbox_status(config: Path = typer.Option(..., "--config", "-c"),
                  as_json: bool = typer.Option(False, "--json")) -> None:
    """Pending findings by priority, oldest age, size against quota, drops."""
    import json

    with _outbox(config) as ob:
        st = ob.status()
    typer.echo(json.dumps(st.to_dict(), indent=2) if as_json else st.describe())


@outbox_app.command("list")
def outbox_list(config: Path = typer.Option(..., "--config", "-c"),
                limit: int = typer.Option(50, help="show at most this many")) -> None:
    """List pending findings, highest priority first."""
    with _outbox(config) as ob:
        for row in ob.list_pending(limit):
            typer.echo(row.describe())


@outbox_app.command("retry")
def outbox_retry(config: Path = typer.Option(..., "--config", "-c")) -> None:
    """Send again now every finding the hospital has not acknowledged (in flight or at the broker)."""
    with _outbox(config) as ob:
        n = ob.retry_all(at_broker=True)
    typer.echo(f"{n} finding(s) re-queued")


@outbox_app.command("purge-expired")
def outbox_purge(config: Path = typer.Option(..., "--config", "-c")) -> None:
    """Remove findings whose time-to-live has passed (counted and reported, never silent)."""
    with _outbox(config) as ob:
        n = ob.purge_expired()
    typer.echo(f"{n} expired finding(s) purged")


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
        raise fail(f"the export toolchain is not installed ({e.name} missing); run: pip install 'medge[export]'") from None
    export_app(args=list(ctx.args), prog_name="medge export")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
