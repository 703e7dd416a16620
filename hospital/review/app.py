"""The review station's web application: server-rendered pages (Starlette + Jinja2), no JavaScript.

Access is decided in one place, `Guard`, an ASGI layer in front of the router, so a route added later is
covered without doing anything: every path except ``/login`` needs a live session (pages redirect to
``/login``, API and image paths answer 401), paths under ``/admin`` and ``/api/admin`` need the admin role
(403), and every request that is not GET or HEAD needs the session's CSRF token in its form field
``csrf_token`` (or an ``X-CSRF-Token`` header) (403). The login form itself carries a token bound to a
short-lived cookie (login CSRF). Each response gets a strict Content-Security-Policy, ``no-store`` and
no-sniff headers; the session cookie is HttpOnly, SameSite=Strict and Secure when the request came over
TLS (directly, or from a reverse proxy that says so in X-Forwarded-Proto).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from edge.findings import iso_utc
from hospital.review import charts, stats
from hospital.review.auth import Auth, Session, create_user, hash_password, same
from hospital.review.db import ROLES, STATE_OF_VERDICT, STATES, VERDICTS, ReviewDB
from hospital.store import StoreUnavailable

SESSION_COOKIE = "medge_session"
LOGIN_COOKIE = "medge_login_csrf"
PUBLIC = frozenset({"/login"})
ADMIN_PREFIXES = ("/admin", "/api/admin")
MAX_BODY = 64 * 1024
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
TEMPLATES = Path(__file__).with_name("templates")


def is_api(path: str) -> bool:
    """API and image paths answer 401 without a session; pages redirect to the login form."""
    return path.startswith("/api/") or "." in path.rsplit("/", 1)[-1]


def _form(body: bytes, content_type: str) -> dict[str, str]:
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return {}
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items()}


def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


class Guard:
    """Authentication, role and CSRF checks for every request, before routing."""

    def __init__(self, app: Any, station: Station) -> None:
        self.app, self.station = app, station

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_secured(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
                started = True
            await send(message)

        try:
            await self._checked(scope, receive, send_secured)
        except StoreUnavailable as e:
            if started:
                raise
            # the database went away (a restart, a failover): say so and keep serving; the next request
            # connects again
            text = f"The review station cannot reach its database ({e}). Nothing was lost; try again in a moment."
            response: Response = (JSONResponse({"error": text}, 503) if is_api(scope["path"])
                                  else PlainTextResponse(text, 503))
            response.headers["Retry-After"] = "5"
            await response(scope, receive, send_secured)

    async def _checked(self, scope: dict, receive: Callable, send_secured: Callable) -> None:
        request = Request(scope)
        path, method = scope["path"], scope["method"]
        body = b""
        if method not in ("GET", "HEAD"):
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY:
                    await PlainTextResponse("request too large", 413)(scope, receive, send_secured)
                    return
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
        form = _form(body, request.headers.get("content-type", ""))
        state = scope.setdefault("state", {})
        state["form"] = form

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        if path in PUBLIC:
            if method not in ("GET", "HEAD") and not same(form.get("csrf_token"), request.cookies.get(LOGIN_COOKIE)):
                await self.station.refuse_login_csrf(request)(scope, receive, send_secured)
                return
            await self.app(scope, replay, send_secured)
            return
        session = await run_in_threadpool(self.station.auth.session, request.cookies.get(SESSION_COOKIE))
        if session is None:
            if is_api(path):
                response: Response = JSONResponse({"error": "login required"}, 401)
            else:
                target = path + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
                response = RedirectResponse("/login?" + urlencode({"next": target if method == "GET" else "/"}), 303)
            await response(scope, receive, send_secured)
            return
        if path.startswith(ADMIN_PREFIXES) and not session.user.is_admin:
            await self.station.error(request, session, 403, "Only administrators may open this page.")(
                scope, receive, send_secured)
            return
        if method not in ("GET", "HEAD"):
            token = form.get("csrf_token") or request.headers.get("x-csrf-token")
            if not same(token, session.csrf):
                await self.station.error(request, session, 403, "The form's security token is missing or stale: "
                                         "reload the page and try again.")(scope, receive, send_secured)
                return
        state["session"] = session
        await self.app(scope, replay, send_secured)


class Station:
    """The pages, over one database."""

    def __init__(self, db: ReviewDB, *, clock: Callable[[], float] = time.time, refresh_s: int = 30,
                 idle_s: float | None = None) -> None:
        self.db = db
        self.auth = Auth(db, clock) if idle_s is None else Auth(db, clock, idle_s=idle_s)
        self.refresh_s = refresh_s
        self.env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
        self.env.filters["pct"] = stats.pct
        self.env.filters["when"] = lambda s: "-" if not s else str(s).replace("T", " ")[:16] + (
            " UTC" if str(s).endswith("Z") else "")
        self.env.globals["states"] = STATES

    # --- helpers ------------------------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, session: Session | None = None,
               **ctx: Any) -> HTMLResponse:
        session = session or request.scope.get("state", {}).get("session")
        html = self.env.get_template(name).render(request=request, session=session, user=session.user if session else None,
                                                  csrf=session.csrf if session else "", **ctx)
        return HTMLResponse(html, status)

    def error(self, request: Request, session: Session | None, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status, session=session, code=status, message=message)

    def refuse_login_csrf(self, request: Request) -> HTMLResponse:
        return self.login_page(request, "The login form expired: please try again.", 403)

    @staticmethod
    def remote(request: Request) -> str | None:
        return request.client.host if request.client else None

    @staticmethod
    def session_of(request: Request) -> Session:
        return request.state.session

    @staticmethod
    def filters(request: Request) -> dict[str, str]:
        q = request.query_params
        out = {k: q.get(k, "").strip() for k in ("site", "device", "modality", "model", "since")}
        out["state"] = q.get("state", "unreviewed")
        if out["state"] not in (*STATES, "all"):
            out["state"] = "unreviewed"
        if out["since"] and not _valid_date(out["since"]):
            out["since"] = ""
        return {k: v for k, v in out.items() if v}

    # --- login ----------------------------------------------------------------------------------------

    def login_page(self, request: Request, message: str = "", status: int = 200) -> HTMLResponse:
        token = secrets.token_urlsafe(32)
        nxt = _safe_next(request.query_params.get("next") or request.state.form.get("next"))
        response = self.render(request, "login.html", status, message=message, login_csrf=token, next=nxt)
        response.set_cookie(LOGIN_COOKIE, token, max_age=3600, path="/login", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    def login(self, request: Request) -> Response:
        if request.method == "GET":
            if self.auth.session(request.cookies.get(SESSION_COOKIE)) is not None:
                return RedirectResponse("/", 303)
            return self.login_page(request)
        form = request.state.form
        result = self.auth.login(form.get("username", ""), form.get("password", ""), self.remote(request))
        if result.session_token is None:
            return self.login_page(request, result.message, 429 if result.locked else 401)
        response = RedirectResponse(_safe_next(form.get("next")), 303)
        response.set_cookie(SESSION_COOKIE, result.session_token, path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    def logout(self, request: Request) -> Response:
        self.auth.logout(self.session_of(request), self.remote(request))
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- worklist and findings ------------------------------------------------------------------------

    def worklist(self, request: Request) -> Response:
        self.db.index_findings()
        f = self.filters(request)
        counts = self.db.state_counts({k: v for k, v in f.items() if k != "state"})
        rows = self.db.worklist(f)
        base = {k: v for k, v in f.items() if k != "state"}
        state_links = {s: "/?" + urlencode({**base, "state": s}) for s in (*STATES, "all")}
        return self.render(request, "worklist.html", rows=rows, counts=counts, total=sum(counts.values()), filters=f,
                           choices=self.db.choices(), state_links=state_links, refresh_s=self.refresh_s)

    def api_worklist(self, request: Request) -> Response:
        self.db.index_findings()
        return JSONResponse({"findings": self.db.worklist(self.filters(request)),
                             "counts": self.db.state_counts(self.filters(request))})

    def finding(self, request: Request) -> Response:
        fid = request.path_params["finding_id"]
        self.db.index_findings()
        row = self.db.finding_row(fid)
        doc = self.db.finding_document(fid) if row else None
        session = self.session_of(request)
        if row is None or doc is None:
            return self.error(request, session, 404, f"No finding {fid} in this database.")
        self.db.audit("view_finding", session.user.username, at=self.auth.now(), finding_id=fid,
                      remote=self.remote(request))
        nxt = [r for r in self.db.worklist({"state": "unreviewed"}, limit=2) if r["finding_id"] != fid]
        return self.render(request, "finding.html", row=row, doc=doc, model=doc.get("model") or {},
                           verdicts=list(reversed(self.db.verdicts(fid))), labels=self.db.labels_of(row["model_name"]),
                           saved=request.query_params.get("saved"), error=request.query_params.get("error"),
                           next_id=nxt[0]["finding_id"] if nxt else None,
                           state=STATE_OF_VERDICT.get(row["verdict"] or "", "unreviewed"))

    def overlay(self, request: Request) -> Response:
        fid = request.path_params["finding_id"]
        doc = self.db.finding_document(fid)
        b64 = (doc or {}).get("overlay_png_b64")
        if not b64:
            return PlainTextResponse("this finding has no overlay", 404)
        try:
            png = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            return PlainTextResponse("the stored overlay is not base64", 422)
        if not png.startswith(b"\x89PNG\r\n\x1a\n"):
            return PlainTextResponse("the stored overlay is not a PNG", 422)
        return Response(png, media_type="image/png")

    def verdict(self, request: Request) -> Response:
        fid = request.path_params["finding_id"]
        session, form = self.session_of(request), request.state.form
        self.db.index_findings(force=True)
        row = self.db.finding_row(fid)
        if row is None:
            return self.error(request, session, 404, f"No finding {fid} in this database.")
        verdict = form.get("verdict", "")
        corrected = form.get("corrected_label", "").strip() or None
        comment = form.get("comment", "").strip() or None
        problem = None
        if verdict not in VERDICTS:
            problem = f"unknown verdict {verdict[:20]!r}"
        elif verdict == "corrected" and not corrected:
            problem = "a corrected label is needed for 'corrected'"
        elif verdict == "corrected" and corrected == row["label"]:
            problem = "the corrected label is the finding's own label: choose 'agree' instead"
        elif corrected and len(corrected) > 128 or comment and len(comment) > 2000:
            problem = "label (128) or comment (2000 characters) too long"
        if problem:
            return RedirectResponse(f"/findings/{quote(fid)}?" + urlencode({"error": problem}), 303)
        if verdict != "corrected":
            corrected = None
        at = self.auth.now()
        with self.db.transaction():
            self.db.add_verdict(fid, verdict, corrected, comment, session.user.username, at)
            self.db.audit("verdict", session.user.username, at=at, finding_id=fid, remote=self.remote(request),
                          detail=verdict + (f" -> {corrected}" if corrected else ""))
        return RedirectResponse(f"/findings/{quote(fid)}?saved=1", 303)

    # --- the dashboard --------------------------------------------------------------------------------

    def summary(self, request: Request) -> tuple[dict[str, str], stats.Summary]:
        self.db.index_findings()
        f = {k: v for k, v in self.filters(request).items() if k in ("since", "site", "device", "model", "modality")}
        return f, stats.summarize(self.db.reviewed_rows(f))

    def audit_page(self, request: Request) -> Response:
        f, s = self.summary(request)
        return self.render(request, "audit.html", s=s, filters=f, choices=self.db.choices(), notes=stats.__doc__,
                           agreement_svg=Markup(charts.svg_chart(s, "agreement", "Reviewer agreement per model")),
                           review_svg=Markup(charts.svg_chart(s, "needs_review", "Needs-review rate per model")))

    def api_audit(self, request: Request) -> Response:
        f, s = self.summary(request)
        return JSONResponse(summary_json(s, f))

    # --- administration -------------------------------------------------------------------------------

    def users_page(self, request: Request, message: str = "", status: int = 200) -> Response:
        return self.render(request, "users.html", status, users=self.db.users(), roles=ROLES,
                           message=message or request.query_params.get("message", ""))

    def users_post(self, request: Request) -> Response:
        session, form = self.session_of(request), request.state.form
        from edge.errors import InputError

        try:
            create_user(self.db, form.get("username", "").strip(), form.get("role", ""), form.get("password", ""),
                        session.user.username)
        except InputError as e:
            return self.users_page(request, str(e), 400)
        self.db.audit("user_added", session.user.username, at=self.auth.now(), remote=self.remote(request),
                      detail=f"{form.get('username', '').strip()} ({form.get('role')})")
        return RedirectResponse("/admin/users?" + urlencode({"message": f"added {form.get('username', '').strip()}"}), 303)

    def user_post(self, request: Request) -> Response:
        session, form = self.session_of(request), request.state.form
        name = request.path_params["username"]
        if self.db.user(name) is None:
            return self.error(request, session, 404, f"No user {name}.")
        role = form.get("role") or None
        active = {"1": True, "0": False}.get(form.get("active", ""))
        password = form.get("password") or None
        if role is not None and role not in ROLES:
            return self.users_page(request, f"unknown role {role!r}", 400)
        if name == session.user.username and (role == "reviewer" or active is False):
            return self.users_page(request, "you cannot demote or disable your own account", 400)
        from edge.errors import InputError

        try:
            hashed = hash_password(password) if password else None
        except InputError as e:
            return self.users_page(request, str(e), 400)
        self.db.update_user(name, role=role, active=active, password_hash=hashed)
        changes = [f"role={role}" if role else "", f"active={active}" if active is not None else "",
                   "password reset" if hashed else ""]
        self.db.audit("user_changed", session.user.username, at=self.auth.now(), remote=self.remote(request),
                      detail=f"{name}: {', '.join(c for c in changes if c) or 'nothing'}")
        return RedirectResponse("/admin/users?" + urlencode({"message": f"updated {name}"}), 303)

    def log_page(self, request: Request) -> Response:
        return self.render(request, "log.html", entries=self.db.audit_log(300))

    # --- the application ------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.login, methods=["GET", "POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/", self.worklist, methods=["GET"]),
            Route("/findings/{finding_id}", self.finding, methods=["GET"]),
            Route("/findings/{finding_id}/overlay.png", self.overlay, methods=["GET"]),
            Route("/findings/{finding_id}/verdict", self.verdict, methods=["POST"]),
            Route("/audit", self.audit_page, methods=["GET"]),
            Route("/admin/users", self.users_page, methods=["GET"]),
            Route("/admin/users", self.users_post, methods=["POST"]),
            Route("/admin/users/{username}", self.user_post, methods=["POST"]),
            Route("/admin/log", self.log_page, methods=["GET"]),
            Route("/api/worklist", self.api_worklist, methods=["GET"]),
            Route("/api/audit", self.api_audit, methods=["GET"]),
        ]

    def app(self) -> Starlette:
        app = Starlette(routes=self.routes())
        app.add_middleware(Guard, station=self)
        return app


def _valid_date(s: str) -> bool:
    from datetime import datetime

    try:
        datetime.fromisoformat(s.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False


def summary_json(s: stats.Summary, filters: dict[str, str]) -> dict[str, Any]:
    def counts(c: stats.Counts) -> dict[str, Any]:
        return {"findings": c.findings, "needs_review": c.needs_review, "reviewed": c.reviewed, "agree": c.agree,
                "disagree": c.disagree, "corrected": c.corrected, "agreement": c.agreement,
                "needs_review_rate": c.needs_review_rate}

    return {"filters": filters, "generated_at": iso_utc(), "bucket": s.bucket, "buckets": s.buckets,
            "groups": {kind: [{"key": g.key, **counts(g.counts), "trend": None if g.trend is None else
                               {"first": g.trend.first, "last": g.trend.last, "falling": g.trend.falling}}
                              for g in groups] for kind, groups in s.groups.items()},
            "series": {k: [{"bucket": p.bucket, **counts(p.counts)} for p in pts] for k, pts in s.series.items()},
            "labels": [{"model": x.model, "label": x.label, "reviewed": x.reviewed, "tp": x.tp, "fp": x.fp,
                        "fn_seen": x.fn_seen, "ppv": x.ppv, "sensitivity": x.sensitivity, "note": x.sensitivity_note}
                       for x in s.labels]}


def build_app(db: ReviewDB, **kw: Any) -> Starlette:
    return Station(db, **kw).app()

