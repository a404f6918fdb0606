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

A primary with a synchronous hot standby, for failover tests (`pg_pair`, one pair per test:
failing over uses it up). The primary listens on 127.0.0.41, the standby on 127.0.0.42
(two simulated hosts); the standby is a `pg_basebackup -R` copy that streams the primary's
WAL, and the primary names it in `synchronous_standby_names`, so a COMMIT is acknowledged
only once the standby has the WAL (synchronous_commit=on): what makes "no binding
acknowledged before the failover is lost" true. Failing over is `pair.primary.kill()`
(pg_ctl stop -m immediate: the primary dies without a checkpoint, every connection reset)
and `pair.standby.promote()`; `pair.dsn()` is the multi-host URI sipmask is given, and
`pair.key_file` the store key every store on the pair opens with:

    def test_y(pg_pair: PgPair) -> None:           # ...,target_session_attrs=read-write
        store = PostgresStore(pg_pair.dsn(), key_file=pg_pair.key_file)
        pg_pair.primary.kill(); pg_pair.standby.promote()
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.net import free_port

HOST = "127.0.0.1"
PRIMARY_HOST, STANDBY_HOST = "127.0.0.41", "127.0.0.42"
DATABASE = "sipmask_test"
# What the tests run with: durability off (the tests check sipmask's logic, not the disk).
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        "max_connections": "300", "shared_buffers": "32MB", "log_min_messages": "warning"}


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
    host: str = HOST
    running: bool = True
    removed: bool = False

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [*(["runuser", "-u", "postgres", "--"] if self.as_postgres else []), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def pg_ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), *args)

    def dsn(self, db: str = "postgres", **params: str) -> str:
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        return f"postgresql://postgres@{self.host}:{self.port}/{db}?connect_timeout=10{extra}"

    def log(self) -> str:
        """The server's log (its last 3,000 characters), for failure messages."""
        path = self.datadir / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def pg_dump(self, db: str) -> bytes:
        """The database as `pg_dump` writes it (plain SQL), run as the server's user: what
        an operator's backup, or a thief with the role's password, would hold."""
        cmd = [*(["runuser", "-u", "postgres", "--"] if self.as_postgres else []),
               str(self.bindir / "pg_dump"), "-h", self.host, "-p", str(self.port), "-U",
               "postgres", db]
        done = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        return done.stdout

    def restart(self) -> None:
        """Stop (every connection breaks) and start again on the same port. A fast stop,
        not an immediate one: with synchronous_commit off an immediate stop could lose the
        last commits, which is this server's setting, not what the store promises."""
        # -l: the server's output to its log, not to our pipe (run() would wait on it).
        done = self.pg_ctl("-m", "fast", "-l", str(self.datadir / "server.log"), "-w", "-t",
                           "60", "restart")
        assert done.returncode == 0, done.stderr

    def kill(self) -> None:
        """Die as a crashed primary does: `pg_ctl stop -m immediate` (no checkpoint, no
        goodbye to clients: every connection is reset and the port refuses new ones)."""
        done = self.pg_ctl("-m", "immediate", "-w", "stop")
        assert done.returncode == 0, done.stderr + self.log()
        self.running = False

    def promote(self) -> None:
        """A standby becomes a primary (pg_ctl waits until it accepts writes)."""
        done = self.pg_ctl("-w", "-t", "60", "promote")
        assert done.returncode == 0, done.stderr + self.log()

    def stop(self) -> None:
        if self.removed:
            return
        self.removed = True
        if self.running:
            self.pg_ctl("-m", "immediate", "-w", "stop")
            self.running = False
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _datadir() -> Path:
    """A new empty data directory (in a directory of its own, removed with it), owned by
    `postgres` when we are root: the server refuses to run as root."""
    top = Path(tempfile.mkdtemp(prefix="sipmask-pg-"))
    datadir = top / "data"
    datadir.mkdir()
    if os.geteuid() == 0:
        # The parent stays root's 0700 dir: only postgres's own directory must be its.
        top.chmod(0o711)
        shutil.chown(datadir, "postgres", "postgres")
    datadir.chmod(0o700)
    return datadir


def _start(server: PgServer, settings: Mapping[str, str]) -> None:
    options = " ".join([f"-c listen_addresses={server.host} -p {server.port} "
                        f"-k {server.datadir}",
                        *(f"-c {k}={v}" for k, v in {**FAST, **settings}.items())])
    started = server.pg_ctl("-o", options, "-l", str(server.datadir / "server.log"),
                            "-w", "-t", "60", "start")
    if started.returncode:
        log = server.log()
        server.stop()
        raise RuntimeError(f"pg_ctl start failed: {started.stderr[-1000:]} {log}")


def start_server(bin_dir: Path, host: str = HOST,
                 settings: Mapping[str, str] | None = None) -> PgServer:
    """A new server on `host` (a free port), with FAST's settings and `settings` over them."""
    datadir = _datadir()
    server = PgServer(bin_dir, datadir, free_port(host), os.geteuid() == 0, host)
    made = server._run(str(bin_dir / "initdb"), "-D", str(datadir), "-A", "trust",
                       "-U", "postgres", "--no-sync", "-E", "UTF8")
    if made.returncode:
        shutil.rmtree(datadir.parent, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {made.stderr[-2000:]}")
    # Clients and the standby's WAL receiver come from any 127.0.0.x (simulated hosts).
    with (datadir / "pg_hba.conf").open("a") as hba:
        hba.write("host all all 127.0.0.0/8 trust\nhost replication all 127.0.0.0/8 trust\n")
    _start(server, settings or {})
    return server


_TABLE = re.compile(r"\bsipmask\.(\w+)")


@contextlib.contextmanager
def counted_statements(params: list[int] | None = None) -> Iterator[Counter[str]]:
    """Every statement psycopg sends while the block runs, on any thread (a store's writer
    and lookup threads included), counted by its verb and the first sipmask table it names
    ("SELECT route", "INSERT xuse", "BEGIN"); with `params`, each one's number of
    parameters is appended to it. The statements still run; only Cursor.execute is
    wrapped, and put back on every path."""
    import psycopg

    counts: Counter[str] = Counter()
    lock = threading.Lock()
    execute = psycopg.Cursor.execute

    def counting(cursor: psycopg.Cursor[object], query: object, *args: object,
                 **kwargs: object) -> object:
        text = query if isinstance(query, str) else str(query)
        table = _TABLE.search(text)
        label = f"{text.split(None, 1)[0].upper()} {table.group(1) if table else ''}".strip()
        with lock:
            counts[label] += 1
            if params is not None:
                params.append(len(args[0]) if args and args[0] is not None  # type: ignore[arg-type]
                              else 0)
        return execute(cursor, query, *args, **kwargs)  # type: ignore[arg-type]
    psycopg.Cursor.execute = counting  # type: ignore[assignment,method-assign]
    try:
        yield counts
    finally:
        psycopg.Cursor.execute = execute  # type: ignore[method-assign]


@contextlib.contextmanager
def counted_round_trips(conn: Any) -> Iterator[Counter[str]]:
    """The round trips made on `conn` (a psycopg connection) while the block runs, read
    from libpq's protocol trace: each message after which the client waits for answers
    (Sync; Flush, a read in pipeline mode; a simple-protocol Query), counted by kind."""
    counts: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="sipmask-trace-") as where:
        path = Path(where) / "trace"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            conn.pgconn.trace(fd)
            try:
                yield counts
            finally:
                conn.pgconn.untrace()
        finally:
            os.close(fd)
        # One message a line: time, F (frontend) or B, length, kind, ...
        for line in path.read_text(errors="replace").splitlines():
            fields = line.split("\t")
            if len(fields) > 3 and fields[1] == "F" and fields[3] in ("Sync", "Flush", "Query"):
                counts[fields[3]] += 1


# A server as durable as LMDB, which syncs each commit (benchmarks compare the two).
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def throwaway_database(settings: Mapping[str, str] | None = None,
                       name: str = "bench") -> tuple[str, PgServer]:
    """A new server (FAST's settings, `settings` over them) with an empty database `name`:
    its libpq URI and the server, for the caller to stop. Benchmarks use it."""
    import psycopg

    found = bindir()
    if found is None:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
    server = start_server(found, settings=settings)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server.dsn(name), server


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


def _pending(pid: int, sig: int) -> bool:
    """Whether `sig` waits for process `pid` (a stopped process keeps it pending)."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (sig - 1)) for mask in masks)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- a primary with a synchronous hot standby ---------------------------------------------------
# synchronous_commit=on: a COMMIT waits for the standby named by synchronous_standby_names
# to have flushed its WAL (PostgreSQL docs, "Synchronous Replication"); with the FAST
# setting (off) it would not wait, and an acknowledged write could die with the primary.
REPLICATED = {"synchronous_commit": "on", "wal_level": "replica", "hot_standby": "on"}


@dataclass
class PgPair:
    """A primary and its synchronous standby, each on its own loopback address."""

    primary: PgServer
    standby: PgServer
    key_file: Path          # the store key (PostgreSQL never makes one): every store's
    database: str = DATABASE

    def dsn(self, **params: str) -> str:
        """The multi-host URI: libpq tries both, keeping the one that accepts writes."""
        extra = "".join(f"&{k}={v}" for k, v in params.items())
        hosts = ",".join(f"{s.host}:{s.port}" for s in (self.primary, self.standby))
        return (f"postgresql://postgres@{hosts}/{self.database}"
                f"?target_session_attrs=read-write&connect_timeout=2{extra}")

    def sync_state(self) -> str | None:
        """The standby's state as the primary sees it ('sync' once commits wait for it)."""
        import psycopg
        with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT sync_state FROM pg_stat_replication").fetchone()
        return None if row is None else str(row[0])

    def kill_primary_behind(self, lag_s: float) -> float:
        """Kill the primary (as `kill()` does: SIGQUIT to the postmaster, pg_ctl's
        immediate stop) once the standby has received nothing for `lag_s`: the primary's
        WAL sender is stopped (SIGSTOP) meanwhile, and let go only when its SIGQUIT is
        pending, so it dies without sending what it held. Commits of those `lag_s` are
        on the primary alone, which a synchronous standby never acknowledges. Returns the
        monotonic time of the kill."""
        import psycopg
        with psycopg.connect(self.primary.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT pid FROM pg_stat_replication").fetchone()
        assert row is not None, "the primary has no WAL sender"
        sender = int(row[0])
        postmaster = int((self.primary.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(sender, signal.SIGSTOP)
        try:
            time.sleep(lag_s)
            killed = time.monotonic()
            os.kill(postmaster, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while not _pending(sender, signal.SIGQUIT):
                assert time.monotonic() < deadline, "the postmaster never told its children"
                time.sleep(0.002)
        finally:
            os.kill(sender, signal.SIGCONT)
        while _alive(postmaster):
            assert time.monotonic() < deadline, "the primary did not die"
            time.sleep(0.01)
        self.primary.running = False
        return killed

    def stop(self) -> None:
        self.primary.stop()
        self.standby.stop()


def start_pair(bin_dir: Path, key_file: Path, settings: Mapping[str, str] | None = None,
               *, synchronous: bool = True) -> PgPair:
    """A primary on PRIMARY_HOST with the test database migrated, a standby made from it
    with `pg_basebackup -R` on STANDBY_HOST, and the primary then waiting for it on every
    commit. synchronous_standby_names is set (ALTER SYSTEM) only after the copy, so it is
    the primary's alone: a promoted standby carrying it would wait on every commit for a
    standby of its own that does not exist. `synchronous=False` leaves the standby
    asynchronous (commits do not wait for it): only to show what the setting guards.
    `key_file` (an existing store key) goes with the pair for the stores opened on it."""
    import psycopg

    from sipmask.store.pg_schema import migrate
    primary = start_server(bin_dir, PRIMARY_HOST, {**REPLICATED, **(settings or {})})
    standby: PgServer | None = None
    try:
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        with psycopg.connect(primary.dsn(DATABASE), autocommit=True) as conn:
            migrate(conn)
        datadir = _datadir()
        standby = PgServer(bin_dir, datadir, free_port(STANDBY_HOST), primary.as_postgres,
                           STANDBY_HOST, running=False)
        copied = standby._run(str(bin_dir / "pg_basebackup"), "-D", str(datadir),
                              "-h", primary.host, "-p", str(primary.port), "-U", "postgres",
                              "-R", "-X", "stream", "-c", "fast", "--no-sync")
        if copied.returncode:
            raise RuntimeError(f"pg_basebackup failed: {copied.stderr[-2000:]}")
        standby.running = True
        _start(standby, {**REPLICATED, **(settings or {})})
        pair = PgPair(primary, standby, key_file)
        if synchronous:
            with psycopg.connect(primary.dsn(), autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
                conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while pair.sync_state() != ("sync" if synchronous else "async"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby never became synchronous: {standby.log()}")
            time.sleep(0.05)
        return pair
    except BaseException:
        primary.stop()
        if standby is not None:
            standby.stop()
        raise


@pytest.fixture
def pg_pair(pg_key: Path) -> Iterator[PgPair]:
    """A fresh primary + synchronous standby (about 3 s to make), with the test's store key
    (`pg_key`); stopped after the test."""
    found = bindir()
    if found is None:
        pytest.skip("PostgreSQL is not installed (Debian package postgresql; "
                    "scripts/setup --test installs it)")
    pair = start_pair(found, pg_key)
    try:
        yield pair
    finally:
        pair.stop()
