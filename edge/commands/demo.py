"""`medge demo`: the whole device path on bundled samples, in under a minute, with no hardware.

Runs the daemon exactly as a device would (same profile loader, bundle signature check, pipeline and
outbox) on ``firmware_configs/demo.yaml`` from this checkout, with its data folder started afresh, and
prints each finding as it lands. The demo profile has no broker, so findings stay in the local outbox;
saying so explicitly avoids the natural question "where did they go?". ``--broker URL`` turns sync on,
so the same run also shows the hospital side: a `medge receive` on that broker stores and acknowledges
the findings, and the demo waits (``sync.drain_on_exit_s``) until it has.
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


def run_demo(data_dir: Path | None = None, echo=print, broker: str | None = None) -> int:
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
    if broker:
        import dataclasses

        cfg = dataclasses.replace(cfg, sync=dataclasses.replace(cfg.sync, enabled=True, broker=broker,
                                                                backoff_min_s=0.5, backoff_max_s=2.0))
    echo(f"medge demo: device {cfg.device.id}, {len(cfg.models)} model(s), {len(cfg.sources)} sample source(s); "
         "synthetic data, decision support only")
    for s in cfg.sources:
        echo(f"  source {s.name}: {s.kind} {s.path.name if s.path else ''} -> model {s.model}")
    seen: list[Finding] = []

    def show(f: Finding, new: bool) -> None:
        seen.append(f)
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
    extra = "" if Path(data_dir) == load_config(profile, check_files=False).data_dir else f" --data-dir {data_dir}"
    shown = os.path.relpath(profile) if Path(os.path.relpath(profile)).parts[:1] != ("..",) else str(profile)
    echo(f"  they are kept in {data_dir}; look at them with:")
    echo(f"    medge findings list -c {shown}{extra}")
    echo(f"    medge outbox status -c {shown}{extra}")
    return code


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
