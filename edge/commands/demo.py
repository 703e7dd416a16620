"""`medge demo`: the whole device path on bundled samples, in under a minute, with no hardware.

Runs the daemon exactly as a device would (same profile loader, bundle signature check, pipeline and
outbox) on ``firmware_configs/demo.yaml`` from this checkout, with its data folder started afresh, and
prints each finding as it lands. The demo profile has no broker, so findings stay in the local outbox;
saying so explicitly avoids the natural question "where did they go?". ``--broker URL`` turns sync on,
so the same run also shows the hospital side: a `medge receive` on that broker stores and acknowledges
the findings, and the demo waits (``sync.drain_on_exit_s``) until it has.

Pictures: the demo profile draws an overlay for every finding (`pipeline.overlays: all`) and the demo writes
them as PNGs into ``<data_dir>/overlays/``. The hospital side needs the original study UIDs to file a DICOM
SR in its PACS; the demo plays the hospital too, so it makes a re-link key pair in ``<data_dir>/hospital/``
on first use and seals each finding's origin to it (a real device gets only the hospital's public key).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

from edge.commands.report_lines import finding_line
from edge.errors import ConfigError
from edge.findings import Finding

DEMO_MAX_SECONDS = 55.0


def demo_profile() -> Path:
    """The demo runs from a source checkout: the profile, bundles and samples live next to `edge/`."""
    import edge

    p = Path(edge.__file__).resolve().parents[1] / "firmware_configs" / "demo.yaml"
    if not p.is_file():
        raise ConfigError(f"{p}: demo profile not found; run 'medge demo' from a medge source checkout "
                          "(pip install -e .)")
    return p


MARKER = ".medge-demo"  # what makes a folder the demo's own (and safe to start afresh)


def _fresh(folder: Path) -> None:
    """Start the default demo folder afresh (each run shows its own findings); only a folder the demo made."""
    if folder.exists() and (folder / MARKER).is_file():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by medge demo; removed and re-made by the next demo run\n")


def run_demo(data_dir: Path | None = None, echo=print, broker: str | None = None, relink_keygen=None) -> int:
    """``relink_keygen``: makes the demo hospital's re-link pair (`hospital.relink.keygen`; the CLI passes it,
    since nothing under edge/ imports the hospital package); None: findings carry pseudonyms only."""
    from edge.config import load_config
    from edge.runtime.daemon import LOG_FORMAT, run_daemon

    profile = demo_profile()
    if data_dir is None:  # the profile's own folder: `medge findings list -c demo.yaml` finds it afterwards
        data_dir = load_config(profile, check_files=False).data_dir
        _fresh(data_dir)
    if not logging.getLogger().handlers:
        logging.basicConfig(level="WARNING", format=LOG_FORMAT)
    cfg = load_config(profile, data_dir=Path(data_dir))
    cfg = _quiet(cfg)
    cfg, relink_key = _with_relink_key(cfg, Path(data_dir), relink_keygen)
    if broker:
        import dataclasses

        cfg = dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, enabled=True, broker=broker,
                                                                backoff_min_s=0.5, backoff_max_s=2.0))
    echo(f"medge demo: device {cfg.device.id}, {len(cfg.models)} model(s), {len(cfg.sources)} sample source(s); "
         "synthetic data, decision support only")
    for s in cfg.sources:
        echo(f"  source {s.name}: {s.kind} {s.path.name if s.path else ''} -> model {s.model}")
    seen: list[Finding] = []
    from edge.commands.pictures import OverlayFiles

    pictures = OverlayFiles(Path(data_dir) / "overlays")

    def show(f: Finding, new: bool) -> None:
        seen.append(f)
        pictures.add(f, new)
        echo("  finding " + finding_line(f, new))

    t0 = time.monotonic()
    code = run_daemon(cfg, max_seconds=DEMO_MAX_SECONDS, on_finding=show)
    n = _count(cfg.outbox_path)
    echo(f"medge demo: done in {time.monotonic() - t0:.1f} s; {len(seen)} finding(s) produced, {n} in the local "
         f"outbox {cfg.outbox_path}")
    if broker:
        acked = _acknowledged(cfg)
        echo(f"  sent to {broker}: {acked} of {n} acknowledged by the hospital"
             + ("" if acked == n else " (is 'medge receive' running on that broker?)"))
    else:
        echo("  no broker is configured in the demo profile (sync.enabled: false), so findings stay in the local "
             "outbox; on a device they are sent to the hospital broker when the link is up (try --broker)")
    echo(f"  {pictures.line()}")
    if relink_key is not None:
        echo(f"  original study UIDs are sealed to the demo hospital's key {relink_key} (medge hospital dicom "
             "--relink-key opens them)")
    extra = "" if Path(data_dir) == load_config(profile, check_files=False).data_dir else f" --data-dir {data_dir}"
    shown = os.path.relpath(profile) if Path(os.path.relpath(profile)).parts[:1] != ("..",) else str(profile)
    echo(f"  they are kept in {data_dir}; look at them with:")
    echo(f"    medge findings list -c {shown}{extra}")
    echo(f"    medge outbox status -c {shown}{extra}")
    return code


def _with_relink_key(cfg, data_dir: Path, keygen):
    """The demo hospital's own re-link pair in <data_dir>/hospital/ (made once) unless the profile names a
    hospital key; returns the profile and the private key the demo's hospital side opens origins with."""
    import dataclasses

    if cfg.privacy.relink_public_key is not None or keygen is None:
        return cfg, None  # the profile's own hospital key (or none): its private half is not the demo's
    folder = data_dir / "hospital"
    if not (folder / "relink.key").exists():
        keygen(folder / "relink.key", folder / "relink.pub.pem")
    return (dataclasses.replace(cfg, privacy=dataclasses.replace(cfg.privacy, relink_public_key=folder / "relink.pub.pem")),
            folder / "relink.key")


def _quiet(cfg):
    """Demo output is the findings; keep the daemon's own log at warnings unless asked otherwise."""
    import dataclasses

    return dataclasses.replace(cfg, log_level="warning") if cfg.log_level == "info" else cfg


def _acknowledged(cfg) -> int:
    from edge.link.outbox import Outbox

    ob = Outbox.from_config(cfg, create=False)
    try:
        return ob.status().delivered
    finally:
        ob.close()


def _count(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT COUNT(*) FROM findings").fetchone()[0])
    except sqlite3.Error:
        return 0
