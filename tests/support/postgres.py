"""A real PostgreSQL server for the tests: one per test session, a fresh database per test.

The server is Debian's `postgresql` package (CI installs it: scripts/setup --test). It
refuses to run as root, so as root the data directory belongs to `postgres` and initdb /
pg_ctl run through `runuser -u postgres --` (shared/TESTING.md). It listens on a free port
of 127.0.0.1 (and its unix socket in the data directory); durability is off (fsync,
synchronous_commit): the tests check sipmask's logic, not the disk.

Each test gets the test database emptied: the connections an earlier test left are ended,
sipmask's schema dropped and migrated again (50 ms here, where a CREATE DATABASE from a
template took 230 ms), so tests stay independent and fast. The server starts on the first
test that asks for it and stops when the test process exits.

    def test_x(pg_dsn: str, pg_key: Path) -> None:   # a fresh, migrated database's libpq
        store = PostgresStore(pg_dsn, key_file=pg_key)    # URI, and a store key file
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.net import free_port

HOST = "127.0.0.1"
DATABASE = "sipmask_test"


def bindir() -> Path | None:
    """Where Debian's postgresql package keeps initdb, pg_ctl and postgres (newest)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


@dataclass
class PgServer:
    """One running server: `dsn(db)` for a database on it, `stop()` at the end."""

    bindir: Path
    datadir: Path
    port: int
    as_postgres: bool
    stopped: bool = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*(["runuser", "-u", "postgres", "--"] if self.as_postgres else []), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def dsn(self, db: str = "postgres", **params: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@{HOST}:{self.port}/{db}?connect_timeout=10{extra}"

    def pg_dump(self, db: str) -> bytes:
        """The database as `pg_dump` writes it (plain SQL), run as the server's user: what
        an operator's backup, or a thief with the role's password, would hold."""
        cmd = [*(["runuser", "-u", "postgres", "--"] if self.as_postgres else []),
               str(self.bindir / "pg_dump"), "-h", HOST, "-p", str(self.port), "-U",
               "postgres", db]
        done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    def restart(self) -> None:
        """Stop (every connection breaks) and start again on the same port. A fast stop,
        not an immediate one: with synchronous_commit off an immediate stop could lose the
        last commits, which is this server's setting, not what the store promises."""
        # -l: the server's output to its log, not to our pipe (run() would wait on it).
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m",
                         "fast", "-l", str(self.datadir / "server.log"), "-w", "-t",
                         "60", "restart")
        assert done.returncode == 0, done.stderr

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                  "-w", "stop")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_server(bin_dir: Path) -> PgServer:
    as_postgres = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="sipmask-pg-"))
    datadir = top / "data"
    datadir.mkdir()
    if as_postgres:
        # The parent stays root's 0700 dir: only postgres's own directory must be its.
        top.chmod(0o711)
        shutil.chown(datadir, "postgres", "postgres")
    datadir.chmod(0o700)
    server = PgServer(bin_dir, datadir, free_port(HOST), as_postgres)
    made = server._run(str(bin_dir / "initdb"), "-D", str(datadir), "-A", "trust",
                       "-U", "postgres", "--no-sync", "-E", "UTF8")
    if made.returncode:
        shutil.rmtree(top, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {made.stderr[-2000:]}")
    options = (f"-c listen_addresses={HOST} -p {server.port} -k {datadir} -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300 "
               "-c shared_buffers=32MB -c log_min_messages=warning")
    started = server._run(str(bin_dir / "pg_ctl"), "-D", str(datadir), "-o", options,
                          "-l", str(datadir / "server.log"), "-w", "-t", "60", "start")
    if started.returncode:
        log = (datadir / "server.log").read_text(errors="replace")[-2000:] \
            if (datadir / "server.log").exists() else ""
        server.stop()
        raise RuntimeError(f"pg_ctl start failed: {started.stderr[-1000:]} {log}")
    return server


class _Session:
    """The process's one server and its test database, made on first use."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.server: PgServer | None = None

    def get(self) -> PgServer:
        with self.lock:
            if self.server is None:
                found = bindir()
                if found is None:
                    pytest.skip("PostgreSQL is not installed (Debian package postgresql; "
                                "scripts/setup --test installs it)")
                self.server = start_server(found)
                atexit.register(self.server.stop)
                import psycopg
                with psycopg.connect(self.server.dsn(), autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {DATABASE}")
            return self.server

    def fresh_database(self) -> str:
        """The test database, emptied: connections a previous test left are ended, the
        schema dropped and migrated again (50 ms; a CREATE DATABASE took 230 ms here)."""
        import psycopg

        from sipmask.store.pg_schema import SCHEMA, migrate
        server = self.get()
        with psycopg.connect(server.dsn(DATABASE), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            migrate(conn)
        return server.dsn(DATABASE)


SESSION = _Session()


@pytest.fixture
def pg_server() -> PgServer:
    """The session's server (started on first use; skipped when PostgreSQL is absent)."""
    return SESSION.get()


@pytest.fixture
def pg_dsn() -> str:
    """The test database, fresh: sipmask's schema migrated, nothing in it."""
    return SESSION.fresh_database()


@pytest.fixture
def pg_key(tmp_path: Path) -> Path:
    """The test's store key file (a PostgreSQL store never makes one): 32 random bytes,
    mode 0600, in the test's tmp_path."""
    from sipmask.store.crypto import create_key_file
    path = tmp_path / "store.key"
    create_key_file(path)
    return path
