"""The review station's work: the worklist's order, filters and counts, the finding page and its overlay,
append-only verdicts, the agreement numbers and their trend, report, export and add-user; all on a receiver
database that receivers keep writing to; the store-bound tests on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from datetime import timedelta

import cv2
import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("argon2")
pytest.importorskip("uvicorn")

from hospital.review import stats  # noqa: E402
from hospital.review.db import SCHEMA_VERSION, ReviewDB  # noqa: E402
from tests.support import ROOT  # noqa: E402
from tests.support.review import CXR, NOW, US, WORKLIST_ORDER, LiveStation, finding, make_db, store  # noqa: E402


def _medge(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          input=stdin, timeout=120)


def _findings_table(db) -> str:
    rows = db.query("SELECT * FROM {findings} ORDER BY finding_id")
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def test_worklist_orders_urgent_then_needs_review_then_oldest_and_filters(store_db):
    db = make_db(store_db)
    with LiveStation(db) as live:
        c = live.client()
        c.login("rita")
        status, _, body = c.get("/")
        assert status == 200 and '<meta http-equiv="refresh"' in body
        import re

        assert re.findall(r'data-finding="([^"]+)"', body) == WORKLIST_ORDER
        assert 'data-state="unreviewed">unreviewed: <b>6</b>' in body
        for query, expect in (("?site=site-a", ["routine-old", "routine-new", "low-one"]),
                              ("?device=cart-1", ["urgent-review", "urgent-plain"]),
                              ("?modality=US", ["urgent-review", "urgent-plain"]),
                              ("?model=cxr-opacity+1.0.0", ["routine-review", "routine-old", "routine-new", "low-one"])):
            status, _, body = c.get("/" + query)
            assert re.findall(r'data-finding="([^"]+)"', body) == expect, query
        c.post("/findings/urgent-review/verdict", {"csrf_token": c.csrf, "verdict": "agree"})
        c.post("/findings/routine-old/verdict", {"csrf_token": c.csrf, "verdict": "disagree", "comment": "artefact"})
        status, _, body = c.get("/")
        assert re.findall(r'data-finding="([^"]+)"', body) == [f for f in WORKLIST_ORDER if f not in ("urgent-review",
                                                                                                      "routine-old")]
        api = json.loads(c.get("/api/worklist?state=all")[2])
        assert api["counts"] == {"unreviewed": 4, "agreed": 1, "disagreed": 1, "corrected": 0}
        assert [r["finding_id"] for r in api["findings"]] == WORKLIST_ORDER
        assert [r["finding_id"] for r in json.loads(c.get("/api/worklist?state=disagreed")[2])["findings"]] == ["routine-old"]
        # a receiver keeps writing while the station runs: the new finding shows up, the findings table is untouched
        store(db.url, [("site-c", finding("late-urgent", priority="urgent", needs_review=True, acquired=NOW))])
        before = _findings_table(db)
        import time

        time.sleep(1.1)
        status, _, body = c.get("/")
        assert re.findall(r'data-finding="([^"]+)"', body)[0] == "late-urgent"
        assert _findings_table(db) == before


def test_finding_page_overlay_and_append_only_verdicts(store_db):
    db = make_db(store_db)
    with LiveStation(db) as live:
        c = live.client()
        c.login("rita")
        status, _, body = c.get("/findings/routine-review")
        for part in ("focal_opacity", "0.550", "uncertain: confidence 0.55", "area_mm2 = 312.5", "cxr-opacity 1.0.0 int8",
                     "c" * 64, "site-b / xray-1", "2026-12-01 10:00 UTC", 'id="overlay"', "No verdict yet."):
            assert part in body, part
        status, headers, png = c.get("/findings/routine-review/overlay.png")
        assert status == 200 and headers["content-type"] == "image/png"
        status, _, body = c.get("/findings/low-one")
        assert "carries no overlay" in body and c.get("/findings/low-one/overlay.png")[0] == 404
        assert c.get("/findings/nope")[0] == 404
        # agree, then a corrected label: both kept, the latest counts
        assert c.post("/findings/routine-review/verdict", {"csrf_token": c.csrf, "verdict": "agree"})[0] == 303
        live.clock.advance(60)
        admin = live.client()
        admin.login("admin")
        assert admin.post("/findings/routine-review/verdict", {"csrf_token": admin.csrf, "verdict": "corrected",
                                                              "corrected_label": "normal", "comment": "no opacity"})[0] == 303
        status, _, body = c.get("/findings/routine-review")
        assert 'id="state">corrected' in body
        table = body.split('id="verdicts"')[1]
        assert table.index("admin") < table.index("rita") and "corrected (counts)" in table and "agree (superseded)" in table
        assert [(v.verdict, v.reviewer, v.corrected_label) for v in live.db.verdicts("routine-review")] == [
            ("agree", "rita", None), ("corrected", "admin", "normal")]
        # refused verdicts say why and record nothing
        for form, why in (({"verdict": "corrected"}, "corrected label is needed"),
                          ({"verdict": "corrected", "corrected_label": "focal_opacity"}, "choose"),
                          ({"verdict": "maybe"}, "unknown verdict")):
            status, headers, _ = c.post("/findings/routine-review/verdict", {"csrf_token": c.csrf, **form})
            assert status == 303 and "error=" in headers["location"]
            assert why.replace(" ", "+") in headers["location"] or why in c.get(headers["location"])[2]
        assert len(live.db.verdicts("routine-review")) == 2


def _rows(weeks: list[tuple[int, int]], model="m 1", label="x", start=NOW - timedelta(weeks=8)) -> list[dict]:
    """Findings per week: (agreed, disagreed)."""
    out = []
    for w, (agree, disagree) in enumerate(weeks):
        for i in range(agree + disagree):
            t = start + timedelta(weeks=w, hours=i)
            out.append({"model_name": model.split()[0], "model_version": model.split()[1], "site": "s", "device_id": "d",
                        "label": label, "needs_review": i % 4 == 0, "sort_time": t.isoformat().replace("+00:00", "Z"),
                        "verdict": "agree" if i < agree else "disagree", "corrected_label": None})
    return out


def test_agreement_ppv_sensitivity_and_a_downward_trend():
    falling = _rows([(9, 1), (9, 1), (7, 3), (6, 4), (5, 5), (4, 6)])
    steady = _rows([(8, 2)] * 6, model="n 2")
    s = stats.summarize(falling + steady)
    assert s.bucket == "week" and len(s.buckets) >= 6
    by = {g.key: g for g in s.groups["model"]}
    assert by["m 1"].counts.agreement == pytest.approx(40 / 60) and by["m 1"].trend.falling
    assert not by["n 2"].trend.falling and "m 1" in [g.key for g in s.falling] and "n 2" not in [g.key for g in s.falling]
    assert by["m 1"].counts.needs_review_rate == pytest.approx(sum(r["needs_review"] for r in falling) / 60)
    # one label only: PPV yes, sensitivity not computable
    (m,) = [x for x in s.labels if x.model == "m 1"]
    assert m.ppv == pytest.approx(40 / 60) and m.sensitivity is None and "not computable" in m.sensitivity_note
    # two labels: a finding corrected to the other label is a miss of that label
    rows = _rows([(3, 0)], label="a") + _rows([(2, 0)], label="b")
    rows[0]["verdict"], rows[0]["corrected_label"] = "corrected", "b"
    labels = {x.label: x for x in stats.label_stats(rows)}
    assert (labels["a"].tp, labels["a"].fp, labels["a"].ppv) == (2, 1, pytest.approx(2 / 3))
    assert (labels["b"].tp, labels["b"].fn_seen, labels["b"].sensitivity) == (2, 1, pytest.approx(2 / 3))
    from hospital.review.charts import png_chart, svg_chart

    svg = svg_chart(s, "agreement", "Reviewer agreement per model")
    assert svg.startswith("<svg") and 'class="series falling" data-model="m 1"' in svg and "falling" in svg
    assert 'class="series" data-model="n 2"' in svg
    img = cv2.imdecode(np.frombuffer(png_chart(s), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 400


def _weekly_history(db):
    """Eight weeks of cxr-opacity findings with reviewer agreement falling from 100 % to 25 %."""
    db = make_db(db, findings=[])
    pairs, verdicts = [], []
    for w in range(8):
        for i in range(4):
            fid = f"w{w}-{i}"
            pairs.append(("site-a", finding(fid, model=CXR, acquired=NOW - timedelta(weeks=8 - w, hours=i),
                                            needs_review=i == 0, overlay=False)))
            verdicts.append((fid, "agree" if i < 4 - w // 2 else "disagree"))
    pairs.append(("site-b", finding("us-1", model=US, label="free_fluid", acquired=NOW, overlay=False)))
    store(db.url, pairs)
    r = ReviewDB(db.url)
    r.index_findings(force=True)
    for fid, v in verdicts:
        r.add_verdict(fid, v, None, None, "rita", "2026-12-01T12:00:00.000Z")
    r.close()
    return db


def test_audit_page_shows_the_fall_and_the_report_and_export_say_the_same(store_db, tmp_path):
    db = _weekly_history(store_db)
    with LiveStation(db) as live:
        c = live.client()
        c.login("rita")
        status, _, body = c.get("/audit")
        assert status == 200 and 'id="falling"' in body and "cxr-opacity 1.0.0" in body.split('id="falling"')[1][:300]
        assert body.count("<svg") == 2 and 'class="series falling" data-model="cxr-opacity 1.0.0"' in body
        assert "not computable" in body and "site-a/xray-1" in body and "site-b/xray-1" in body
        api = json.loads(c.get("/api/audit")[2])
        model = {g["key"]: g for g in api["groups"]["model"]}["cxr-opacity 1.0.0"]
        assert model["reviewed"] == 32 and model["agree"] == 20 and model["trend"]["falling"]
        since = json.loads(c.get("/api/audit?since=2026-11-17")[2])
        assert {g["key"]: g for g in since["groups"]["model"]}["cxr-opacity 1.0.0"]["findings"] < 32
    out = tmp_path / "report.md"
    r = _medge("review", "report", "--db", db.url, "--since", "2026-01-01", "--out", str(out))
    assert r.returncode == 0, r.stderr
    md = out.read_text()
    assert "**Falling agreement:** cxr-opacity 1.0.0" in md and "![agreement and needs-review rate over time](report.png)" in md
    assert "| cxr-opacity 1.0.0 | 32 | 25 % | 32 | 20 | 12 | 0 | 62 % |" in md and "not computable" in md
    img = cv2.imread(str(tmp_path / "report.png"))
    assert img is not None and img.shape[1] == 720
    r = _medge("review", "export", "--db", db.url)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 32
    assert {"finding_id", "verdict", "corrected_label", "reviewer", "time"} <= set(lines[0])
    assert lines[0]["reviewer"] == "rita" and lines[0]["model"]["name"] == "cxr-opacity" and lines[0]["latest"]
    r = _medge("review", "export", "--db", db.url, "--since", "2027-01-01")
    assert r.returncode == 0 and r.stdout == ""
    r = _medge("review", "export", "--db", db.url, "--since", "yesterday")
    assert r.returncode == 2 and "--since 'yesterday'" in r.stderr


def test_add_user_reads_the_password_from_stdin_and_tables_are_versioned(store_db, tmp_path):
    db = make_db(store_db)
    r = _medge("review", "add-user", "carol", "--role", "reviewer", "--db", db.url, stdin="carol-password-1\n")
    assert r.returncode == 0 and "added reviewer carol" in r.stdout, r.stderr
    rdb = ReviewDB(db.url)
    (user, hashed) = rdb.user("carol")
    assert user.role == "reviewer" and hashed.startswith("$argon2id$") and "carol-password-1" not in hashed
    assert rdb.schema_version() == SCHEMA_VERSION and rdb.migrate() == SCHEMA_VERSION
    assert [r[0] for r in db.query("SELECT version FROM {review_schema} ORDER BY version")] == [1, 2]  # each once
    rdb.close()
    for args, err in ((["carol", "--role", "reviewer"], "exists already"), (["dave", "--role", "boss"], "role 'boss'"),
                      (["dave", "--role", "admin"], "at least 8 characters")):
        r = _medge("review", "add-user", *args, "--db", db.url, stdin="short\n" if "dave" in args else "long-enough-9\n")
        assert r.returncode == 2 and err in r.stderr, r.stderr
    r = _medge("review", "add-user", "x", "--role", "admin", "--db", str(tmp_path / "missing.sqlite3"), stdin="p" * 9)
    assert r.returncode == 2 and "no receiver database here" in r.stderr
