"""What `medge review serve|report|export|add-user` run (the CLI in `edge/cli.py` only parses arguments)."""

from __future__ import annotations

import getpass
import ipaddress
import json
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from edge.errors import ConfigError, InputError
from edge.findings import iso_utc
from hospital.review import charts, stats
from hospital.review.db import ReviewDB


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--listen {listen!r}: use HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]") or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(host: str, tls: bool, insecure_listen: bool) -> None:
    if is_loopback(host) or tls or insecure_listen:
        return
    raise ConfigError(f"--listen {host}: not a loopback address, and no TLS: passwords and findings would cross the "
                      "network in clear. Put a TLS reverse proxy in front and listen on 127.0.0.1 (docs/HOSPITAL.md), "
                      "give --tls-cert/--tls-key, or accept the risk with --insecure-listen")


def parse_since(since: str | None) -> str | None:
    """A date or date-time (UTC unless it says otherwise) as the review tables compare times."""
    if not since:
        return None
    try:
        d = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--since {since!r}: use a date (2026-01-31) or an ISO date-time") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)
    return iso_utc(d.timestamp())


def uvicorn_config(app: Any, host: str, port: int, tls_cert: Path | None = None, tls_key: Path | None = None,
                   log_level: str = "info") -> Any:
    """uvicorn's settings: X-Forwarded-For/-Proto believed from a proxy on this host only (then the session
    cookie is Secure when the proxy speaks TLS), no Server header."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level, proxy_headers=True,
                          forwarded_allow_ips="127.0.0.1", server_header=False,
                          ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)


def serve(db_url: str, listen: str, *, insecure_listen: bool = False, tls_cert: Path | None = None,
          tls_key: Path | None = None, refresh_s: int = 30, echo: Callable[[str], None] = print) -> int:
    import uvicorn

    from hospital.review.app import build_app

    host, port = parse_listen(listen)
    if (tls_cert is None) != (tls_key is None):
        raise InputError("--tls-cert and --tls-key go together")
    check_listen(host, tls_cert is not None, insecure_listen)
    db = ReviewDB(db_url)
    try:
        db.index_findings(force=True)
        if not db.users():
            echo("medge review: no users yet; create one with: medge review add-user NAME --role admin --db ...")
        scheme = "https" if tls_cert else "http"
        echo(f"medge review: serving {db_url} on {scheme}://{listen} (review schema {db.schema_version()})")
        uvicorn.Server(uvicorn_config(build_app(db, refresh_s=refresh_s), host, port, tls_cert, tls_key)).run()
    finally:
        db.close()
    return 0


def read_password(stdin: TextIO) -> str:
    if stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise InputError("the two passwords differ")
        return first
    line = stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def add_user(db_url: str, name: str, role: str, stdin: TextIO = sys.stdin) -> str:
    from hospital.review.auth import create_user

    db = ReviewDB(db_url)
    try:
        create_user(db, name, role, read_password(stdin), created_by=None)
        db.audit("user_added", None, detail=f"{name} ({role}) by medge review add-user")
    finally:
        db.close()
    return f"added {role} {name}"


def export_verdicts(db_url: str, since: str | None, out: TextIO) -> int:
    """Every verdict (superseded ones too, marked), oldest first, as JSON lines."""
    db = ReviewDB(db_url)
    try:
        db.index_findings(force=True)
        verdicts = db.verdicts(since=parse_since(since))
        latest = {v.finding_id: v.id for v in db.verdicts()}
        for v in verdicts:
            row = db.finding_row(v.finding_id) or {}
            out.write(json.dumps({"finding_id": v.finding_id, "verdict": v.verdict, "corrected_label": v.corrected_label,
                                  "reviewer": v.reviewer, "time": v.at, "comment": v.comment, "label": row.get("label"),
                                  "model": {"name": row.get("model_name"), "version": row.get("model_version"),
                                            "sha256": row.get("model_sha256")},
                                  "latest": latest.get(v.finding_id) == v.id}, sort_keys=True) + "\n")
    finally:
        db.close()
    return len(verdicts)


def _table(title: str, groups: list[stats.Group]) -> list[str]:
    out = [f"| {title} | findings | needs-review rate | reviewed | agree | disagree | corrected | agreement (= PPV) | trend |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for g in groups:
        c = g.counts
        trend = "-" if g.trend is None else ("**" + g.trend.describe() + "**" if g.trend.falling else g.trend.describe())
        out.append(f"| {g.key} | {c.findings} | {stats.pct(c.needs_review_rate)} | {c.reviewed} | {c.agree} | "
                   f"{c.disagree} | {c.corrected} | {stats.pct(c.agreement)} | {trend} |")
    return out + [""]


def render_markdown(s: stats.Summary, since: str | None, png_name: str, db_label: str) -> str:
    lines = ["# medge review: agreement with reviewers", "",
             f"Generated {iso_utc()} from `{db_label}`; findings acquired since {since or 'the first one'}; "
             f"{s.rows} finding(s), per {s.bucket}. The latest verdict on each finding counts.", "",
             "Findings are decision support for a clinician, not a diagnosis.", ""]
    if s.falling:
        lines += ["**Falling agreement:** " + "; ".join(f"{g.key} {g.trend.describe()}" for g in s.falling if g.trend), ""]
    lines += [f"![agreement and needs-review rate over time]({png_name})", ""]
    lines += ["## Per model and version", ""] + _table("model", s.groups["model"])
    lines += ["## Per site", ""] + _table("site", s.groups["site"])
    lines += ["## Per device", ""] + _table("device", s.groups["device"])
    lines += ["## Per label", "", "| model | label | reviewed | TP | FP | misses seen | PPV | sensitivity |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for x in s.labels:
        sens = x.sensitivity_note or f"{stats.pct(x.sensitivity)} (upper bound)"
        lines.append(f"| {x.model} | {x.label} | {x.reviewed} | {x.tp} | {x.fp} | {x.fn_seen} | {stats.pct(x.ppv)} | {sens} |")
    lines += ["", "## Over time (agreement per model)", "", "| period | " + " | ".join(s.series) + " |",
              "| --- |" + " ---: |" * len(s.series)]
    for i, b in enumerate(s.buckets):
        cells = []
        for pts in s.series.values():
            c = pts[i].counts
            cells.append(f"{stats.pct(c.agreement)} ({c.reviewed})" if c.findings else "")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    lines += ["", "## What can be computed", "", (stats.__doc__ or "").strip(), ""]
    return "\n".join(lines)


def report(db_url: str, since: str | None, out: Path) -> list[Path]:
    if out.suffix.lower() != ".md":
        raise InputError(f"--out {out}: a Markdown file name (report.md); the plot goes next to it as .png")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")
    db = ReviewDB(db_url)
    try:
        db.index_findings(force=True)
        since_s = parse_since(since)
        s = stats.summarize(db.reviewed_rows({"since": since_s} if since_s else {}))
    finally:
        db.close()
    png = out.with_suffix(".png")
    png.write_bytes(charts.png_chart(s))
    label = Path(db_url).name if "://" not in db_url else db_url.split("@")[-1]  # never a password in the report
    out.write_text(render_markdown(s, since, png.name, label))
    return [out, png]
