"""The review station's access rules, over HTTP against a real uvicorn server on 127.0.0.1 (a test clock
drives expiry and lockout): no session, wrong role, missing or wrong CSRF token, expired session, lockout,
logout, cookie flags, the audit log, and the listen-address rule; on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("argon2")
pytest.importorskip("uvicorn")

from starlette.routing import Route  # noqa: E402

from hospital.review.app import PUBLIC, is_api  # noqa: E402
from hospital.review.auth import ABSOLUTE_S, IDLE_S, LOCKOUT_S  # noqa: E402
from tests.support import ROOT  # noqa: E402
from tests.support.review import PASSWORDS, LiveStation, db_errors, make_db, sqlite_db  # noqa: E402


@pytest.fixture
def live(store_db):
    with LiveStation(make_db(store_db)) as s:
        yield s


def _routes(live) -> list[tuple[str, str]]:
    """(method, concrete path) for every route the application has, path parameters filled in."""
    out = []
    for r in live.app.routes:
        assert isinstance(r, Route), f"{r!r}: a route kind this test does not enumerate"
        path = re.sub(r"\{[^}]+\}", "urgent-review", r.path)
        out += [(m, path) for m in sorted(r.methods or ())]
    return out


def _refused(status: int, headers: dict[str, str], path: str) -> bool:
    if is_api(path):
        return status == 401
    return status == 303 and headers.get("location", "").startswith("/login?")


def test_every_route_refuses_a_request_without_a_live_session(live):
    routes = _routes(live)
    paths = {p for _, p in routes}
    assert {"/", "/findings/urgent-review", "/findings/urgent-review/overlay.png", "/findings/urgent-review/verdict",
            "/audit", "/admin/users", "/admin/log", "/api/worklist", "/api/audit", "/logout"} <= paths
    assert {"/login"} == PUBLIC
    anonymous, forged = live.client(), live.client()
    forged.cookies["medge_session"] = "not-a-session-token"
    checked = 0
    for method, path in routes + [("GET", "/no-such-page"), ("PUT", "/"), ("DELETE", "/findings/urgent-review")]:
        if path in PUBLIC:
            continue
        for c in (anonymous, forged):
            status, headers, body = c.request(method, path, {"verdict": "agree"} if method == "POST" else None)
            assert _refused(status, headers, path), (method, path, status, headers.get("location"), body[:200])
            checked += 1
    assert checked >= 2 * 15
    assert live.db.verdicts() == []  # nothing got through
    status, headers, _ = anonymous.get("/api/worklist")
    assert status == 401 and headers["content-type"].startswith("application/json")
    status, headers, _ = anonymous.get("/findings/urgent-review?x=1")
    assert status == 303 and headers["location"] == "/login?next=%2Ffindings%2Furgent-review%3Fx%3D1"


def test_only_admins_open_admin_routes(live):
    rita, admin = live.client(), live.client()
    assert rita.login("rita") == 303 and admin.login("admin") == 303
    admin_routes = [(m, p) for m, p in _routes(live) if p.startswith(("/admin", "/api/admin"))]
    assert len(admin_routes) >= 4
    for method, path in admin_routes:
        status, _, body = rita.request(method, path, {"csrf_token": rita.csrf, "username": "mallory", "role": "admin",
                                                     "password": "long-enough-1"} if method == "POST" else None)
        assert status == 403 and (method == "HEAD" or "Only administrators" in body), (method, path, status)
    assert live.db.user("mallory") is None
    status, _, body = rita.get("/")
    assert status == 200 and 'href="/admin/users"' not in body  # no admin link for a reviewer
    # an admin manages users: add one, who can then log in; demote and disable
    status, _, body = admin.get("/admin/users")
    assert status == 200 and "rita" in body
    status, headers, _ = admin.post("/admin/users", {"csrf_token": admin.csrf, "username": "bob", "role": "reviewer",
                                                     "password": "bob-password-1"})
    assert status == 303, headers
    bob = live.client()
    assert bob.login("bob", "bob-password-1") == 303
    status, _, _ = admin.post("/admin/users/bob", {"csrf_token": admin.csrf, "active": "0"})
    assert status == 303
    assert bob.get("/")[0] == 303  # disabling ends bob's session
    assert live.client().login("bob", "bob-password-1") == 401
    status, _, body = admin.post("/admin/users/admin", {"csrf_token": admin.csrf, "role": "reviewer"})
    assert status == 400 and "your own account" in body


def test_every_post_needs_the_sessions_csrf_token(live):
    admin, other = live.client(), live.client()
    assert admin.login("admin") == 303 and other.login("rita") == 303
    assert admin.csrf and other.csrf and admin.csrf != other.csrf
    posts = [p for m, p in _routes(live) if m == "POST" and p not in PUBLIC]
    assert {"/findings/urgent-review/verdict", "/logout", "/admin/users", "/admin/users/urgent-review"} <= set(posts)
    for path in posts:
        for token in (None, "", "wrong", other.csrf):
            form = {"verdict": "agree", "username": "eve", "role": "admin", "password": "eve-password-1"}
            if token is not None:
                form["csrf_token"] = token
            status, _, body = admin.post(path, form)
            assert status == 403 and "security token" in body, (path, token, status)
    assert live.db.verdicts() == [] and live.db.user("eve") is None
    assert admin.get("/")[0] == 200  # /logout was refused too: still logged in
    # the header form works for API clients; the right token goes through
    status, _, _ = admin.post("/findings/urgent-review/verdict", {"verdict": "agree"}, headers={"X-CSRF-Token": admin.csrf})
    assert status == 303
    assert [v.verdict for v in live.db.verdicts()] == ["agree"]
    # the login form has its own token, bound to a cookie
    anon = live.client()
    status, _, body = anon.post("/login", {"username": "rita", "password": PASSWORDS["rita"]})
    assert status == 403 and "login form expired" in body and "medge_session" not in anon.cookies


def test_sessions_expire_when_idle_and_after_the_absolute_limit(live):
    c = live.client()
    assert c.login("rita") == 303
    live.clock.advance(IDLE_S - 60)
    assert c.get("/")[0] == 200  # activity renews the idle expiry
    live.clock.advance(IDLE_S - 60)
    assert c.get("/api/worklist")[0] == 200
    live.clock.advance(IDLE_S + 1)
    status, headers, _ = c.get("/")
    assert status == 303 and headers["location"].startswith("/login")
    assert c.get("/api/worklist")[0] == 401
    # absolute: active every 25 minutes, still out after 12 hours
    assert c.login("rita") == 303
    steps = int(ABSOLUTE_S // (25 * 60))
    for _ in range(steps):
        live.clock.advance(25 * 60)
        assert c.get("/api/worklist")[0] == 200
    live.clock.advance(25 * 60)
    assert c.get("/api/worklist")[0] == 401
    db = live.test_db
    rows = db.query("SELECT COUNT(*) FROM {review_sessions} WHERE username = 'rita'")
    assert rows[0][0] == 0  # expired sessions are deleted, not just ignored


def test_five_failures_lock_a_user_name_for_15_minutes(live):
    c = live.client()
    for i in range(4):
        assert c.login("rita", "wrong-password") == 401, i
    assert c.login("rita", "wrong-password") == 429
    assert c.login("rita") == 429  # even the right password, while locked
    live.clock.advance(LOCKOUT_S - 5)
    assert c.login("rita") == 429
    live.clock.advance(10)
    assert c.login("rita") == 303
    # unknown names get the same answers and lock the same way (no telling which names exist)
    u = live.client()
    assert [u.login("nobody", "x") for _ in range(5)] == [401, 401, 401, 401, 429]
    actions = [r[2] for r in live.db.audit_log(100)]
    assert actions.count("login_failed") == 10 and actions.count("login_locked") == 2 and "login" in actions


def test_parallel_wrong_passwords_cannot_slip_past_the_limit(live):
    """A password check takes tens of milliseconds; 20 guesses sent at once must not all be checked
    against a count that none of them has raised yet."""
    clients = [live.client() for _ in range(20)]
    with ThreadPoolExecutor(len(clients)) as pool:
        statuses = sorted(pool.map(lambda c: c.login("rita", "wrong-password"), clients))
    assert statuses == [401] * 4 + [429] * 16
    actions = [r[2] for r in live.db.audit_log(100)]
    assert actions.count("login_failed") == 5 and actions.count("login_locked") == 15
    assert live.client().login("rita") == 429  # locked, even for the right password
    live.clock.advance(LOCKOUT_S + 1)
    assert live.client().login("rita") == 303


def test_logout_ends_the_session_on_the_server(live):
    c = live.client()
    assert c.login("rita") == 303
    token = c.cookies["medge_session"]
    status, headers, _ = c.post("/logout", {"csrf_token": c.csrf})
    assert status == 303 and headers["location"] == "/login"
    replay = live.client()
    replay.cookies["medge_session"] = token  # the old cookie, kept by an attacker
    assert replay.get("/")[0] == 303 and replay.get("/api/audit")[0] == 401


def test_cookie_flags_and_security_headers(live):
    c = live.client()
    c.get("/login")
    token = c.cookies["medge_login_csrf"]
    status, headers, _ = c.post("/login", {"username": "rita", "password": PASSWORDS["rita"], "csrf_token": token})
    cookie = next(x for x in c.last_headers.get_all("Set-Cookie") if x.startswith("medge_session="))
    assert status == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP on loopback
    # behind a TLS proxy on this host (X-Forwarded-Proto https from 127.0.0.1) the cookie is Secure
    p = live.client()
    p.get("/login", headers={"X-Forwarded-Proto": "https"})
    p.post("/login", {"username": "rita", "password": PASSWORDS["rita"], "csrf_token": p.cookies["medge_login_csrf"]},
           headers={"X-Forwarded-Proto": "https"})
    cookie = next(x for x in p.last_headers.get_all("Set-Cookie") if x.startswith("medge_session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    status, headers, _ = c.get("/")
    assert status == 200
    h = {k.lower(): v for k, v in headers.items()}
    assert "default-src 'none'" in h["content-security-policy"] and h["cache-control"] == "no-store"
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY" and "server" not in h


def test_audit_log_records_logins_views_and_verdicts_and_is_append_only(live):
    c = live.client()
    assert c.login("rita", "wrong-password") == 401
    assert c.login("rita") == 303
    assert c.get("/findings/urgent-review")[0] == 200
    assert c.post("/findings/urgent-review/verdict", {"csrf_token": c.csrf, "verdict": "agree"})[0] == 303
    log = [(who, action, fid) for _, who, action, fid, _, _ in reversed(live.db.audit_log(50))]
    assert ("rita", "login_failed", None) in log and ("rita", "login", None) in log
    assert ("rita", "view_finding", "urgent-review") in log and ("rita", "verdict", "urgent-review") in log
    admin = live.client()
    admin.login("admin")
    status, _, body = admin.get("/admin/log")
    assert status == 200 and "view_finding" in body and "login_failed" in body
    entries = len(live.db.audit_log(500))
    truncate = ("TRUNCATE {review_verdicts}", "TRUNCATE {review_audit}") if live.test_db.pg else ()
    for sql in ("UPDATE {review_verdicts} SET verdict = 'disagree'", "DELETE FROM {review_verdicts}",
                "UPDATE {review_audit} SET action = 'x'", "DELETE FROM {review_audit}", *truncate):
        with pytest.raises(db_errors(), match="append-only"):
            live.test_db.execute(sql)
    assert [v.verdict for v in live.db.verdicts()] == ["agree"] and len(live.db.audit_log(500)) == entries


def test_binding_beyond_loopback_without_tls_is_refused(tmp_path):
    db = make_db(sqlite_db(tmp_path))
    r = subprocess.run([sys.executable, "-m", "edge.cli", "review", "--db", db.url, "--listen", "0.0.0.0:18080"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a loopback address" in r.stderr and "--insecure-listen" in r.stderr
    from hospital.review.commands import check_listen

    check_listen("127.0.0.1", False, False)
    check_listen("::1", False, False)
    check_listen("10.1.2.3", True, False)  # TLS served directly
    check_listen("10.1.2.3", False, True)  # the operator said so


def test_the_station_survives_a_postgresql_restart_without_being_restarted(postgres_server, pg_url, caplog):
    """A lost connection costs the request in flight a 503 with one line (no traceback), and the next
    request connects again; while the server is down every request gets the same 503, fast."""
    import logging

    from tests.support.postgres import TestDB

    caplog.set_level(logging.WARNING, logger="medge.review")
    with LiveStation(make_db(TestDB("postgresql", pg_url))) as live:
        c = live.client()
        assert c.login("rita") == 303 and c.get("/")[0] == 200
        postgres_server.end_sessions(pg_url)  # as a failover would
        status, headers, body = c.get("/")
        assert status == 503 and "cannot reach its database" in body and headers.get("retry-after") == "5"
        assert c.get("/")[0] == 200  # connected again, same session cookie
        postgres_server.stop()
        try:
            status, _, body = c.get("/api/worklist")
            assert status == 503 and "unavailable" in body
            assert c.get("/")[0] == 503
        finally:
            postgres_server.start()
        assert c.get("/")[0] == 200
        status, _, _ = c.post("/findings/urgent-review/verdict", {"csrf_token": c.csrf, "verdict": "agree"})
        assert status == 303 and [v.verdict for v in live.db.verdicts("urgent-review")] == ["agree"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("lost the PostgreSQL connection" in m for m in lines) and any("reconnected" in m for m in lines)
    assert "Traceback" not in caplog.text and "password" not in caplog.text


def test_stations_starting_at_once_on_a_new_postgresql_database_take_turns_at_creating_the_tables(pg_url):
    import threading

    from hospital.review.db import SCHEMA_VERSION, ReviewDB
    from tests.support.review import store, worklist_findings

    store(pg_url, worklist_findings())  # a receiver database without the review tables yet
    errors, opened = [], []
    gate = threading.Barrier(4)

    def start() -> None:
        gate.wait()
        try:
            opened.append(ReviewDB(pg_url))
        except Exception as e:  # noqa: BLE001 - the test reports whatever a start raised
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(opened) == 4
    assert {db.schema_version() for db in opened} == {SCHEMA_VERSION}
    for db in opened:
        db.close()


def test_a_postgresql_database_without_receiver_tables_is_refused_in_one_line(postgres_server):
    from edge.errors import ConfigError
    from hospital.review.db import ReviewDB
    from tests.support.postgres import TestDB

    name = postgres_server.create_database()
    try:
        with pytest.raises(ConfigError) as e:
            ReviewDB(postgres_server.url(name))
        assert "not a receiver database (no medge_findings table)" in str(e.value) and "\n" not in str(e.value)
        assert TestDB("postgresql", postgres_server.url(name)).query("SELECT 1 FROM {review_users}") == []  # none made
    finally:
        postgres_server.drop_database(name)
