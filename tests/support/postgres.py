"""A throwaway PostgreSQL server for tests: Debian's `postgresql` package, one cluster per test session.

``initdb`` runs into a fresh temporary folder and ``postgres`` listens on a free 127.0.0.1 port (and a Unix
socket in that folder), with trust authentication for the one test role: nothing outside the machine can
reach it and it is deleted at the end. PostgreSQL refuses to run as root, so as root both run as the
``postgres`` system user (the package creates it) with the folder owned by that user.

Fixtures (imported into ``tests/conftest.py``):

- ``postgres_server`` (session): the running server; ``restart()``, ``stop()``, ``start()``, ``admin()``;
- ``pg_url``: a new, empty database for one test, dropped afterwards;
- ``store_db``: parametrized over ``sqlite`` and ``postgresql``: one receiver database for one test, as a
  `TestDB` (``.url`` for ``--db`` / `ReceiverConfig`, ``.ids()`` and friends to read it back).

Usage::

    def test_x(store_db):                     # runs twice: SQLite file, PostgreSQL database
        with ReceiverThread(broker, store_db.url): ...
        assert sorted(store_db.ids()) == [...]
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.mqtt_broker import free_port

ROLE = "medge"
# the tables a test names in `TestDB.execute` / `query` as ``{name}``: the receivers' and the review station's
TABLES = ("findings", "events", "rejected", "review_verdicts", "review_audit", "review_users", "review_sessions",
          "review_schema")


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder (``/usr/lib/postgresql/<version>/bin`` on Debian), else None."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = Path(initdb).parent.parent.name
        if re.fullmatch(r"\d+(\.\d+)?", version) and os.access(initdb, os.X_OK):
            found.append((tuple(int(x) for x in version.split(".")), Path(initdb).parent))
    if found:
        return max(found)[1]
    on_path = shutil.which("initdb")  # other distributions put the server tools on PATH
    return Path(on_path).parent if on_path else None


class PostgresServer:
    """One cluster in its own temporary folder; ``url(db)`` names a database in it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="medge-pg-"))  # not under pytest's tmp: that is root-only
        self.data = self.folder / "data"
        self.log_file = self.folder / "postgres.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.run_as: dict[str, Any] = {}
        if os.geteuid() == 0:  # the server refuses to run as root
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root needs the 'postgres' system user (Debian's postgresql package "
                                   "creates it) to run the test server as") from None
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
            self.run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                   "--no-sync", "--no-instructions"])

    def _run(self, cmd: list[str]) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=self.folder, timeout=120, **self.run_as)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(cmd[0]).name} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        log = open(self.log_file, "ab")  # noqa: SIM115 - the server's stderr for its whole life
        try:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.folder}", "-c", "max_connections=100", "-c", "shared_buffers=32MB"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, **self.run_as)
        finally:
            log.close()
        import psycopg

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"postgres did not accept connections within {timeout}s: {self.log()[-2000:]}")

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """``fast`` (SIGINT: sessions are ended, a shutdown checkpoint is written) or ``immediate`` (SIGQUIT: like a
        crash; the next start replays the WAL)."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal({"smart": 15, "fast": 2, "immediate": 3}[mode])
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self, mode: str = "fast", down_s: float = 0.0) -> None:
        self.stop(mode)
        time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def admin(self) -> Any:
        """An autocommit connection to the maintenance database (CREATE/DROP DATABASE, pg_terminate_backend)."""
        import psycopg

        return psycopg.connect(self.url(), autocommit=True)

    def end_sessions(self, url: str) -> None:
        """End every session on the database ``url`` names, as a failover or a restart would."""
        with self.admin() as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                      "pg_backend_pid()", (url.rsplit("/", 1)[1],))

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin() as c:
            c.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        if not self.running:
            return
        with self.admin() as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class TestDB:
    """A receiver database of either kind, read back without going through the code under test's queries."""

    __test__ = False  # not a test class, despite the name
    kind: str  # "sqlite" or "postgresql"
    url: str  # the --db value: a file path or a postgresql:// URL

    @property
    def pg(self) -> bool:
        return self.kind == "postgresql"

    def table(self, name: str) -> str:
        return f"medge_{name}" if self.pg else name

    def execute(self, sql: str, params: tuple = ()) -> list[tuple]:
        """One statement on a connection of the test's own, past the code under test; ``?`` placeholders and
        ``{findings}``-style table names (`TABLES`). Raises what the database raises (a refusing trigger, say)."""
        sql = sql.format(**{t: self.table(t) for t in TABLES})
        if self.pg:
            import psycopg

            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as c:
                cur = c.execute(sql.replace("?", "%s"), params)
                return list(cur.fetchall()) if cur.description else []
        con = sqlite3.connect(self.url, timeout=30)
        try:
            rows = list(con.execute(sql, params).fetchall())
            con.commit()
            return rows
        finally:
            con.close()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """`execute` for reading back: [] while the database or the table does not exist yet."""
        if not self.pg and not Path(self.url).exists():
            return []
        missing: tuple[type[Exception], ...] = (sqlite3.OperationalError,)
        if self.pg:
            import psycopg

            missing = (psycopg.errors.UndefinedTable,)
        try:
            return self.execute(sql, params)
        except missing as e:
            if isinstance(e, sqlite3.OperationalError) and "no such table" not in str(e):
                raise
            return []

    def ids(self) -> list[str]:
        return [r[0] for r in self.query("SELECT finding_id FROM {findings}")]

    def event_ids(self) -> list[str]:
        return [r[0] for r in self.query("SELECT event_id FROM {events}")]

    def rejected_reasons(self) -> list[str]:
        return [r[0] for r in self.query("SELECT reason FROM {rejected}")]

    def schema_versions(self) -> list[int]:
        table = "medge_schema" if self.pg else "schema_version"
        return [int(r[0]) for r in self.query(f"SELECT version FROM {table} ORDER BY version")]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the whole session (initdb takes seconds; a database per test takes ms)."""
    # CI installs both (README's test command): there a missing one is a broken set-up, not a skip
    missing = pytest.fail if os.environ.get("CI") else pytest.skip
    bindir = postgres_bin()
    if bindir is None:
        missing("PostgreSQL is not installed (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("psycopg is not installed (pip install -e '.[hospital]')")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database for one test."""
    if not postgres_server.running:  # a test that stopped the server and failed before starting it again
        postgres_server.start()
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_db(request, tmp_path) -> TestDB:
    """The receiver's database, once as a SQLite file and once as a PostgreSQL database."""
    if request.param == "sqlite":
        return TestDB("sqlite", str(tmp_path / "rx.sqlite3"))
    return TestDB("postgresql", request.getfixturevalue("pg_url"))
