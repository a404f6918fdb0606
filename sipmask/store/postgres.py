"""The PostgreSQL store: bindings, pools, audit, CDRs, the call journal and the events
outbox in one database that many sipmask nodes share (`store.backend: postgres`).

The rules are rules.py's, unchanged: this module gives them a `Txn` over the tables of
pg_schema.py (one per named database) and runs their functions in transactions.

Transactions, and why they are safe without SERIALIZABLE:
  - A rules write (create, delete, pools, sweep, tenants) first takes one transaction-level
    advisory lock (pg_schema.RULES_LOCK), so rules writers run one at a time across every
    node, as LMDB's single writer does; each statement of a READ COMMITTED transaction then
    sees every commit before it, so a rule's read-check-write (pair unique on X, AXN takes
    X whole, least-used X) cannot interleave with another's. Every rules write also bumps
    meta/audit_seq, so under SERIALIZABLE they would serialise anyway, by failing and
    retrying instead of waiting.
  - Reads (`list`, `audit`, `get`) run REPEATABLE READ READ ONLY: one snapshot, as LMDB's
    read transactions are; they never wait for a writer.
  - The call path's lookup (`route`) runs its one or two statements without a transaction.
  - CDRs, the answered-call journal, heartbeats and outbox acks (`write`) touch only keys
    of their own call, node or event, so they take no lock and run in parallel.
  - Serialization failures and deadlocks (which the design should never raise) are retried.

Losing the server (failover): a statement that fails with a broken connection is run again,
whole transaction, on a new connection, for up to `failover_s` (a lookup: 2 s); libpq's
multi-host DSN with `target_session_attrs=read-write` finds the promoted primary. When the
connection breaks during COMMIT the outcome is unknown: a rules write then raises
StoreError saying so (a retried create would be refused as a duplicate of itself), while
`write` (CDRs, journal, heartbeats, acks: all idempotent puts and deletes) retries.

The call path never waits on the network in the event loop, and hands the GIL to no thread
where it can help it: `route_on_loop` sends a lookup on the loop's own connection and takes
its answer when the socket is readable, and cdr/group.py's batches (CDRs, the journal)
commit the same way (`write_on_loop`; both store/pg_loop.py). Whatever those cannot do (a
stranger's scan of X, an extension, anything while their connection is down) runs on
threads: lookups on a bounded pool (`route_soon`, store/offload.py), batches on the group
commit's writer thread. The HTTP API's reads run on `reads`, a pool of their own
(offload.soon), and outbox events on `background`.

Real numbers are sealed with the key in `store.key_file` (store/crypto.py), as on LMDB, so
a `pg_dump` or a stolen disk shows none. Every node must use the same key, so this store
never makes one: a missing key file is refused before anything connects. Opening:
  - a database no key has sealed yet (new, or written by the sipmask before issue 14, KV
    schema 1, records in clear) is sealed with this key: every record through
    store/reseal.py's seal_rows in one transaction that locks every table against other
    nodes' writes, then VACUUM FULL rewrites the tables, so the row versions that held the
    plaintext leave the data files (WAL already written and older backups keep it:
    README "Numbers at rest");
  - a sealed database needs its key (by fingerprint, reseal.check_key).
`rekey` (`sipmask store rekey`) moves every record to a new key the same way, refused
while another sipmask process is connected to the database.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from sipmask.clock import Clock
from sipmask.errors import StoreError
from sipmask.observability.logging import get_logger
from sipmask.store import codec, crypto, reseal
from sipmask.store.base import Binding
from sipmask.store.offload import Offload
from sipmask.store.pg_loop import LoopReads, LoopWrites, first_line
from sipmask.store.pg_schema import (
    PARTITIONS_SQL,
    RULES_LOCK,
    SCHEMA,
    TABLES,
    Table,
    day_date,
    day_of_key,
    migrate,
    partition_day,
    partition_name,
    partition_sql,
)
from sipmask.store.rules import KeyExists, RuleStore, Txn

T = TypeVar("T")

log = get_logger("sipmask.store")

_FIRST_PAGE, _MAX_PAGE = 16, 1024     # scan pages grow from 16 rows (route's scan) by x4
_MANY = 500                           # keys per array of get_many and delete_many
# Parameters a multi-row INSERT may take: psycopg keeps a statement's parsed form (and
# prepares it after its 5th use) only up to 50 parameters (psycopg._queries
# MAX_CACHED_STATEMENT_PARAMS); past that it parses the text again on every execute, which
# was a quarter of a batch of creates' CPU here (104-115 against 78-93 us a bind).
_CACHED_PARAMS = 50
_CONVERT_PAGE = 2000                  # records per step of a seal or rekey (its progress)
_PROGRESS_EVERY_S = 2.0               # a progress line while a seal or rekey runs
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_LOCK = f"SELECT pg_advisory_xact_lock({RULES_LOCK})"   # one rules writer at a time
_WRITE = "BEGIN ISOLATION LEVEL READ COMMITTED"
_SQL = {name: t.sql() for name, t in TABLES.items()}
LOOKUP_PATIENCE_S = 2.0               # a call's lookup retries a failover this long at most
# The HTTP API's reads (offload.soon): threads of their own, so a flood of them never takes
# the threads calls wait for; past READ_QUEUE waiting, a read is refused at once (503).
READ_WORKERS, READ_QUEUE = 2, 256
APP_NAME = "sipmask"                  # application_name of our sessions: "sipmask <instance>"
_VACUUM_DUE = b"vacuum_due"           # meta: a seal or rekey committed, its VACUUM FULL not run
ALONE_WAIT_S = 10.0                   # how long a rekey waits for other sessions to leave
_OTHER_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name LIKE %s AND application_name <> %s")
# While no server answers, a try waits this long at most for a connection, then the next
# try (after its pause) makes the pool connect again: the pool tries only when a request
# starts waiting (reconnect_timeout=0 below), so long waits would be long blind spots.
_WAIT_SLICE_S = 0.25
_PAUSE_S = (0.05, 0.5)                # pause between tries: first, most (doubling between)


class _OutageNoise(logging.Filter):
    """Drops psycopg_pool's record of each failed connection attempt and each connection
    it discards. The pool tries whenever a caller asks (reconnect_timeout=0 below), so an
    outage made some 25 such records a second here, each several lines long; the store
    tells the outage once instead (`store.unreachable`, then `store.reconnected`)."""

    _DROPPED = ("error connecting in", "reconnection attempt in pool",
                "discarding broken connection", "discarding closed connection")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self._DROPPED))


logging.getLogger("psycopg.pool").addFilter(_OutageNoise())


class CommitUnknown(StoreError):
    """The connection broke during COMMIT: the write may or may not have been applied."""


def redact(dsn: str) -> str:
    """The DSN without its password, for error messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<an unparsable DSN>"
    params.pop("password", None)
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def _where(dsn: str) -> str:
    """host:port/dbname of a DSN, each host with its port for a multi-host one
    (h1:5432,h2:5433/db): what errors name."""
    try:
        p = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<an unparsable DSN>"
    hosts = str(p.get("host") or "localhost").split(",")
    ports = str(p.get("port") or "5432").split(",")
    # libpq: one port for all hosts, or one per host (an empty one is the default).
    ports = ports * len(hosts) if len(ports) == 1 else ports
    pairs = ",".join(f"{h or 'localhost'}:{port or 5432}"
                     for h, port in zip(hosts, ports, strict=False))
    return f"{pairs}/{p.get('dbname') or ''}"


class _DayMaker(Protocol):
    def ensure_day(self, day: int) -> None: ...


class _NotOnLoop(Exception):
    """What write_on_loop cannot do there: a read, or a CDR day's partition to make."""


class _Statements:
    """A cursor that keeps the statements it is given instead of running them
    (write_on_loop): writes only."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def execute(self, sql: str, params: Any = None) -> _Statements:
        self.statements.append((sql, params))
        return self

    def fetchone(self) -> Any:
        raise _NotOnLoop("a read")

    fetchall = fetchone

    @property
    def connection(self) -> Any:
        raise _NotOnLoop("a read")


class _KnownDays:
    """ensure_day for a _Statements transaction: a day already made passes, any other
    stops it (making one is DDL on a connection of its own: on a thread)."""

    def __init__(self, store: PostgresStore) -> None:
        self._days = store._days

    def ensure_day(self, day: int) -> None:
        if day not in self._days:
            raise _NotOnLoop(f"day {day} has no partition yet")


class _PgTxn:
    """rules.Txn over one connection's cursor (inside a transaction, or not: `route`)."""

    __slots__ = ("cur", "store")

    def __init__(self, store: _DayMaker, cur: psycopg.Cursor[Any] | _Statements) -> None:
        self.store = store
        self.cur = cur

    @staticmethod
    def _table(db: str) -> Table:
        try:
            return TABLES[db]
        except KeyError:
            raise StoreError(f"no table for the named database {db!r}") from None

    def get(self, db: str, key: bytes) -> bytes | None:
        t = self._table(db)
        row = self.cur.execute(_SQL[db]["get"], t.cols(key)).fetchone()
        return None if row is None else bytes(row[0])

    def get_later(self, db: str, key: bytes) -> Callable[[], bytes | None]:
        # A cursor of its own, so the statements after it (on self.cur) do not take its
        # answer; in pipeline mode the answer is read with the next one waited for.
        t, cur = self._table(db), self.cur.connection.cursor()
        cur.execute(_SQL[db]["get"], t.cols(key))

        def value() -> bytes | None:
            with cur:                  # read once: the cursor goes with its answer
                row = cur.fetchone()
            return None if row is None else bytes(row[0])
        return value

    def put(self, db: str, key: bytes, value: bytes) -> None:
        t = self._table(db)
        if t.kind == "by_day":
            self.store.ensure_day(day_of_key(key))
        self.cur.execute(_SQL[db]["put"], (*t.row(key), value))

    def insert(self, db: str, key: bytes, value: bytes) -> bool:
        t = self._table(db)
        if t.kind == "by_day":
            self.store.ensure_day(day_of_key(key))
        return self.cur.execute(_SQL[db]["insert"], (*t.row(key), value)).fetchone() is not None

    def delete(self, db: str, key: bytes) -> None:
        self.cur.execute(_SQL[db]["delete"], self._table(db).cols(key))

    def delete_many(self, db: str, keys: builtins.list[bytes]) -> None:
        t, sql = self._table(db), _SQL[db]["delete_many"]
        for i in range(0, len(keys), _MANY):
            self.cur.execute(sql, t.key_arrays(keys[i:i + _MANY]))

    def get_many(self, db: str, keys: builtins.list[bytes]) -> dict[bytes, bytes]:
        # One statement per _MANY keys: the keys' rows joined to the table, each an index
        # probe (pg_schema "get_many").
        t, sql = self._table(db), _SQL[db]["get_many"]
        found: dict[bytes, bytes] = {}
        for i in range(0, len(keys), _MANY):
            rows = self.cur.execute(sql, t.key_arrays(keys[i:i + _MANY])).fetchall()
            found.update((bytes(key), bytes(value)) for key, value in rows)
        return found

    def put_many(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> int:
        # Multi-row INSERTs (Citus routes or splits them per shard; _chunks), one
        # statement each, which also counts (pg_schema "put_many": the rows that were
        # there before), as LMDB's putmulti counts.
        added = 0
        for chunk, rows, params in self._chunks(db, items):
            row = self.cur.execute(_SQL[db]["put_many"].format(rows=rows),
                                   [*self._table(db).key_arrays([k for k, _ in chunk]),
                                    *params]).fetchone()
            added += len(chunk) - (int(row[0]) if row else 0)
        return added

    def put_rows(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> None:
        # Nothing to read back: in pipeline mode (_once) these go without a round trip.
        for _, rows, params in self._chunks(db, items):
            self.cur.execute(_SQL[db]["upsert_many"].format(rows=rows), params)

    def insert_rows(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> None:
        # Plain INSERTs: a key already there fails its statement with a unique violation,
        # reported by the next statement waited for or by the COMMIT's Sync, and the
        # transaction is rolled back whole (PostgresStore._run: KeyExists).
        for _, rows, params in self._chunks(db, items):
            self.cur.execute(_SQL[db]["insert_rows"].format(rows=rows), params)

    def _chunks(self, db: str, items: builtins.list[tuple[bytes, bytes]]
                ) -> Iterator[tuple[builtins.list[tuple[bytes, bytes]], str, list[Any]]]:
        """items in chunks of as many rows as keep a statement within _CACHED_PARAMS
        (put_many's key arrays included): each chunk, its VALUES rows, and their
        parameters."""
        t, row = self._table(db), _SQL[db]["row"]
        if t.kind == "by_day":
            for day in {day_of_key(k) for k, _ in items}:
                self.store.ensure_day(day)
        size = (_CACHED_PARAMS - len(t.pk)) // (len(t.columns) + 1)
        for i in range(0, len(items), size):
            chunk = items[i:i + size]
            params: list[Any] = []
            for key, value in chunk:
                params.extend((*t.row(key), value))
            yield chunk, ", ".join([row] * len(chunk)), params

    def scan(self, db: str, start: bytes = b"",
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        # Pages of rows, each fetched whole before it is yielded, so the caller may run
        # other statements (writes included) between steps, as with an LMDB cursor. The
        # first page is small (route's scan stops within 16 keys), later ones larger.
        t, sql = self._table(db), _SQL[db]
        size = _FIRST_PAGE
        if reverse:
            rows = self.cur.execute(sql["last"], (size,)).fetchall()
        else:
            rows = self.cur.execute(sql["from"], (*t.cols(start), size)).fetchall()
        while rows:
            for key, value in rows:
                yield bytes(key), bytes(value)
            if len(rows) < size:
                return
            size = min(size * 4, _MAX_PAGE)
            bound = t.cols(bytes(rows[-1][0]))
            rows = self.cur.execute(sql["before" if reverse else "after"],
                                    (*bound, size)).fetchall()


def read_key(key_file: Path) -> bytes:
    """The shared key's bytes; KeyFileError naming store.key_file when it is missing (with
    how to make the first one: this store never makes it, every node must have the same)."""
    if not key_file.exists():
        raise crypto.KeyFileError(
            f"store.key_file: {key_file} does not exist; a PostgreSQL store never makes its "
            f"key (every node must share one): copy the key file the other nodes use, or "
            f"for a new store make one (umask 077; head -c {crypto.KEY_BYTES} /dev/urandom "
            f"> {key_file})")
    return crypto.read_key_file(key_file)


class PostgresStore(RuleStore):
    """BindingStore on PostgreSQL, shared by every node and admin command that names
    the same DSN. `key_file`: the store key (module docstring); default the config's
    default, as LmdbStore."""

    blocking = True      # its calls wait on the network: keep them off the event loop
    reads_ahead = True   # every read is a round trip: a batch's are fetched together

    def __init__(self, dsn: str, clock: Clock | None = None, *,
                 rng: random.Random | None = None, pool_size: int = 10,
                 call_workers: int = 4, call_queue: int = 1024,
                 failover_s: float = 10.0, connect_timeout_s: float = 5.0,
                 migrate_schema: bool = True, key_file: Path | str | None = None) -> None:
        from sipmask.store.lmdb import default_key_file
        self.key_file = Path(key_file) if key_file is not None else default_key_file()
        master = read_key(self.key_file)     # before any connection: refused without it
        self.dsn = dsn
        self.where = _where(dsn)
        self.failover_s = failover_s
        self._timeout = connect_timeout_s
        self._days: set[int] = set()
        self._days_lock = threading.Lock()
        # Our sessions' application_name: a rekey refuses while others are connected.
        self.session_name = f"{APP_NAME} {uuid.uuid4().hex[:12]}"
        self._down_since: float | None = None    # monotonic: the outage's first failure
        self._down_lock = threading.Lock()
        if migrate_schema:
            self.migrate()
        # reconnect_timeout=0: a connection the pool cannot make is given up at once (after
        # one immediate second try) instead of being retried in the background 1, 2, 4, 8 s
        # later (psycopg_pool's backoff); the next request that finds no connection makes
        # the pool try again. Our callers retry on their own schedule (`_run`), so after a
        # failover the store connects to the promoted primary on their next try, not when
        # the pool's backoff next comes round (that lagged the promotion by up to the
        # outage's own length: tests/integration/test_postgres_failover.py).
        self.pool = ConnectionPool(dsn, min_size=1,
                                   max_size=max(pool_size, call_workers + READ_WORKERS + 2),
                                   kwargs={"autocommit": True,
                                           "application_name": self.session_name},
                                   open=False, timeout=connect_timeout_s, reconnect_timeout=0,
                                   name="sipmask-store")
        try:
            self.pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout:
            self.pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {self.where} "
                             f"within {connect_timeout_s:g} s") from None
        self.calls = Offload(call_workers, call_queue, "store-lookup")
        self._on_loop: LoopReads | None = None       # route_on_loop's connection
        self._on_loop_writes: LoopWrites | None = None   # write_on_loop's
        self.reads = Offload(READ_WORKERS, READ_QUEUE, "store-read")
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-bg")
        try:
            super().__init__(clock, rng, self._adopt_key(master))
        except BaseException:
            self.close()         # a wrong key, a schema too new: every resource goes
            raise

    # -- the key (module docstring) ---------------------------------------------------------
    def _meta(self) -> dict[bytes, bytes | None]:
        return self._read(lambda txn: {name: txn.get("meta", name) for name in (
            b"schema_version", reseal.META_KEY_ID, reseal.META_GENERATION, _VACUUM_DUE)})

    def _adopt_key(self, master: bytes) -> crypto.Keyring:
        """The store's Keyring, after checking the schema and that the key file is the one
        the database is sealed with; a database no key sealed yet is sealed now."""
        meta = self._meta()
        schema = int(meta[b"schema_version"] or 0)
        if schema > codec.SCHEMA_VERSION:
            raise StoreError(f"the database at {self.where} has store schema {schema}; this "
                             f"sipmask reads up to {codec.SCHEMA_VERSION}")
        keys = crypto.Keyring(master, int(meta[reseal.META_GENERATION] or 1))
        if meta[reseal.META_KEY_ID] is None:
            self._convert(lambda db, key, raw: reseal.seal_rows(db, key, raw, keys), keys,
                          "sealing", None)
            meta = self._meta()             # sealed by us, or by a node that came first
        elif meta[_VACUUM_DUE] is not None:
            self._vacuum()                  # a seal or rekey stopped before its VACUUM
        reseal.check_key(meta, keys, self.key_file)
        return keys

    def rekey(self, new_master: bytes) -> crypto.Keyring:
        """Move every record to the key `new_master` (module docstring); the new Keyring,
        now this store's. StoreError while another sipmask process is connected."""
        old = self.keys
        new = crypto.Keyring(new_master, old.generation % 255 + 1)
        if new.fingerprint == old.fingerprint:
            raise StoreError(f"the new key is the store's own key ({old.fingerprint})")
        self._wait_alone("rekey")
        if not self._convert(lambda db, key, raw: reseal.rekey_rows(db, key, raw, old, new),
                             new, "rekey", old.fingerprint.encode(), alone=True):
            raise StoreError("another process rekeyed the store meanwhile")
        self.keys = new
        return new

    def _convert(self, convert: Callable[[str, bytes, bytes], list[reseal.Row]],
                 keys: crypto.Keyring, what: str, expect: bytes | None,
                 alone: bool = False) -> bool:
        """Every record through `convert`, in one transaction that holds the rules lock and
        an EXCLUSIVE lock on every table (other nodes read on, their writes wait), then
        VACUUM FULL. `expect`: the key id the meta holds before (None: not sealed); when it
        has moved, another process converted first and this one does nothing (False).
        `alone`: refuse while another sipmask session is connected (a rekey: a node still
        running would hold the old key)."""
        def run(txn: Txn) -> int | None:
            assert isinstance(txn, _PgTxn) and isinstance(txn.cur, psycopg.Cursor)
            cur = txn.cur
            cur.execute(f"LOCK TABLE {', '.join(t.qname for t in TABLES.values())} "
                        "IN EXCLUSIVE MODE")
            if txn.get("meta", reseal.META_KEY_ID) != expect:
                return None
            if alone:
                self._refuse_others(cur, what)
            total = sum(int(row[0]) for row in cur.execute(" UNION ALL ".join(
                f"SELECT count(*) FROM {t.qname}" for t in TABLES.values()
                if t.name != "meta")).fetchall())
            if total:             # a new database takes the key without a word
                log.info(f"store.{what}", where=self.where, records=total)
            started = last = time.monotonic()
            done = 0
            # The route index first: its keys are made again from the bindings (the old
            # ones held the numbers in clear, or the old key's hashes).
            for name in sorted(TABLES, key=lambda n: n != "route"):
                if name == "meta":
                    continue
                for page in _pages(txn.scan(name)):
                    out: dict[str, list[tuple[bytes, bytes]]] = {}
                    kept: set[bytes] = set()
                    for key, raw in page:
                        for db, new_key, value in convert(name, key, raw):
                            out.setdefault(db, []).append((new_key, value))
                            if db == name:
                                kept.add(new_key)
                    for key, _ in page:
                        if key not in kept:
                            txn.delete(name, key)
                    for db, rows in out.items():
                        txn.put_many(db, sorted(rows))
                    done += len(page)
                    if time.monotonic() - last >= _PROGRESS_EVERY_S:
                        last = time.monotonic()
                        log.info(f"store.{what}", where=self.where, table=name,
                                 records_done=done, records=total)
            txn.put("meta", b"schema_version", str(codec.SCHEMA_VERSION).encode())
            for meta_key, value in reseal.key_meta(keys).items():
                txn.put("meta", meta_key, value)
            if done:
                txn.put("meta", _VACUUM_DUE, b"1")
                log.info(f"store.{what}_done", where=self.where, records=done,
                         seconds=round(time.monotonic() - started, 3))
            return done
        done = self._run(run, _WRITE, lock=True, retry_commit=False)
        if done is None:
            return False
        if done:
            self._vacuum()
        return True

    def _others(self, cur: psycopg.Cursor[Any] | psycopg.Connection[Any]) -> int:
        """Sessions of other sipmask processes connected to this database now."""
        row = cur.execute(_OTHER_SESSIONS, (f"{APP_NAME} %", self.session_name)).fetchone()
        return int(row[0]) if row else 0

    def _wait_alone(self, what: str) -> None:
        """Wait up to ALONE_WAIT_S for other sipmask sessions to leave (a process that just
        closed its connections is still listed for a moment), else refuse."""
        deadline = time.monotonic() + ALONE_WAIT_S
        with self._connect() as conn:
            while self._others(conn) and time.monotonic() < deadline:
                time.sleep(0.1)
            self._refuse_others(conn, what)

    def _refuse_others(self, cur: psycopg.Cursor[Any] | psycopg.Connection[Any],
                       what: str) -> None:
        others = self._others(cur)
        if others:
            raise StoreError(f"the database at {self.where} needs {what} and {others} other "
                             f"sipmask session(s) are connected to it: stop every sipmask "
                             f"process that uses it (sipmask serve on every node, admin "
                             f"commands) and run it again")

    def _vacuum(self) -> None:
        """VACUUM FULL every table: each is written anew, so the row versions a seal or a
        rekey replaced (the plaintext, or the old key's) leave the data files. ANALYZE
        replaces the planner's samples of the old values (pg_statistic keeps common values
        and histogram bounds of every column), and pg_statistic is written anew too: a
        role that does not own the database is only warned there (README)."""
        with self._connect() as conn:
            for t in TABLES.values():
                conn.execute(f"VACUUM (FULL, ANALYZE) {t.qname}")
            conn.execute("VACUUM FULL pg_catalog.pg_statistic")
            conn.execute(f"DELETE FROM {SCHEMA}.meta WHERE k = %s", (_VACUUM_DUE,))

    # -- schema -----------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.dsn, autocommit=True,
                                   connect_timeout=max(1, int(self._timeout)),
                                   application_name=self.session_name)
        except psycopg.OperationalError as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.where}: "
                             f"{first_line(exc)}") from None

    def migrate(self) -> tuple[int, int]:
        """Bring the schema to this version (under an advisory lock); (from, to)."""
        with self._connect() as conn:
            return migrate(conn)

    def ensure_day(self, day: int) -> None:
        """The CDR partition for `day` exists (made now, outside the caller's transaction,
        when it does not: DDL on its own connection, so a CDR commit never holds the
        parent table's lock)."""
        if day in self._days:
            return
        with self._days_lock:
            if day in self._days:
                return
            with self._connect() as conn:
                self._days.update(self._partition_days(conn))
                if day not in self._days:
                    # Another node may make it between our look and our CREATE.
                    with contextlib.suppress(pg_errors.DuplicateTable,
                                             pg_errors.UniqueViolation):
                        conn.execute(partition_sql(day))
                    self._days.add(day)

    @staticmethod
    def _partition_days(conn: psycopg.Connection[Any]) -> set[int]:
        days = (partition_day(row[0]) for row in conn.execute(PARTITIONS_SQL).fetchall())
        return {d for d in days if d is not None}

    def ensure_days_ahead(self, now: float, days: int = 3) -> None:
        """Partitions for today and the next `days` days, so the day's first CDR commits
        without DDL in its way (run at open and by every sweep)."""
        today = day_of_key(int(now * 1_000_000).to_bytes(8, "big"))
        for day in range(today, today + days + 1):
            self.ensure_day(day)

    def drop_days_before(self, before: float) -> int:
        """CDR retention: drop every day partition wholly older than `before` (whole days,
        so a record may outlive the cutoff by up to a day); returns the records dropped."""
        cutoff = day_of_key(int(max(0.0, before) * 1_000_000).to_bytes(8, "big"))
        dropped = 0
        with self._connect() as conn:
            for day in sorted(self._partition_days(conn)):
                if day >= cutoff:
                    break
                name = f"{SCHEMA}.{partition_name(day)}"
                with conn.transaction():
                    # A bounded wait for the parent's lock: CDR writers must not queue
                    # behind us for long; a partition not dropped now is at the next sweep.
                    conn.execute("SET LOCAL lock_timeout = '2s'")
                    row = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
                    conn.execute(f"DROP TABLE {name}")
                dropped += int(row[0]) if row else 0
                with self._days_lock:
                    self._days.discard(day)
            # The CDR-by-binding index entries of the days gone (trace reads no further).
            conn.execute(f"DELETE FROM {TABLES['cdr_binding'].qname} WHERE day < %s",
                         (day_date(cutoff),))
        return dropped

    # -- transactions -----------------------------------------------------------------------
    def _run(self, fn: Callable[[Txn], T], begin: str | None, lock: bool,
             retry_commit: bool, deadline: float | None = None) -> T:
        """fn in a transaction (`begin`), tried again on the failures above until
        `deadline` (monotonic; default failover_s from now)."""
        if deadline is None:
            deadline = time.monotonic() + self.failover_s
        patience = max(0.0, deadline - time.monotonic())
        pause = _PAUSE_S[0]
        while True:
            try:
                out = self._once(fn, begin, lock, deadline)
                if self._down_since is not None:
                    self._up_again()
                return out
            except CommitUnknown:
                if not retry_commit or time.monotonic() >= deadline:
                    raise
            except _RETRYABLE:
                if time.monotonic() >= deadline:
                    raise StoreError("the database kept refusing this transaction "
                                     "(serialization failures)") from None
            except PoolTimeout:
                # No connection within the slice: the pool's tries failed (no primary
                # answers) or every connection is busy; either way try again.
                self._went_down("no connection to a primary")
                if time.monotonic() >= deadline:
                    raise StoreError(f"PostgreSQL at {self.where} is unreachable: no "
                                     f"connection to a primary within {patience:.1f} s"
                                     ) from None
            except psycopg.OperationalError as exc:
                self._went_down(first_line(exc))
                if time.monotonic() >= deadline:
                    raise StoreError(f"PostgreSQL at {self.where} is unreachable: "
                                     f"{first_line(exc)}") from None
                self.pool.check()        # drop every connection the failure broke
            except pg_errors.UniqueViolation as exc:
                # Only insert_rows writes without ON CONFLICT: a key it was told is new.
                raise KeyExists(f"a key already in {exc.diag.table_name or 'a table'}"
                                ) from None
            except pg_errors.CheckViolation:
                # A CDR day partition dropped by another node's retention under our cache.
                with self._days_lock:
                    self._days.clear()
                if time.monotonic() >= deadline:
                    raise
            # Never past the deadline: a last try then runs at it, with a short wait.
            time.sleep(max(0.0, min(pause * (0.5 + random.random()),
                                    deadline - time.monotonic())))
            pause = min(pause * 2, _PAUSE_S[1])

    def _went_down(self, error: str) -> None:
        """The outage's first failure is logged; the rest are not (_OutageNoise)."""
        with self._down_lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning("store.unreachable", where=self.where, error=error)

    def _up_again(self) -> None:
        with self._down_lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.info("store.reconnected", where=self.where,
                     after_s=round(time.monotonic() - since, 3))

    def _once(self, fn: Callable[[Txn], T], begin: str | None, lock: bool,
              deadline: float) -> T:
        # Wait for a connection a slice at a time and never past the caller's patience (a
        # lookup's 2 s): the pool's own timeout (connect_timeout_s) would overrun it.
        wait_s = max(0.01, min(_WAIT_SLICE_S, deadline - time.monotonic()))
        with self.pool.connection(timeout=wait_s) as conn:
            cur = conn.cursor()
            if begin is None:
                return fn(_PgTxn(self, cur))
            # Pipeline mode (libpq): a statement whose answer nobody reads (BEGIN, the
            # rules lock, each put and delete) is sent without waiting for it; the next read
            # collects those answers in its own round trip, and COMMIT goes with the last
            # writes, in the Sync that ends the pipeline. A batch of API creates took 13
            # round trips, now 7. A statement that fails is reported by the next read or by
            # that Sync, and the transaction is then rolled back whole (a failed COMMIT is
            # a rollback).
            committing = False
            try:
                with conn.pipeline() as pipe:
                    try:
                        cur.execute(begin)
                        if lock:
                            cur.execute(_LOCK)
                        out = fn(_PgTxn(self, cur))
                    except BaseException:
                        if not conn.broken:
                            # A failed statement stops the pipeline until a Sync.
                            with contextlib.suppress(psycopg.Error):
                                pipe.sync()
                            with contextlib.suppress(psycopg.Error):
                                cur.execute("ROLLBACK")
                        raise
                    committing = True
                    cur.execute("COMMIT")
            except psycopg.OperationalError as exc:
                if not committing or isinstance(exc, pg_errors.PipelineAborted):
                    raise
                # The last writes and COMMIT went in one round trip: which of them
                # reached the server is not known.
                raise CommitUnknown(f"the connection to PostgreSQL at {self.where} broke "
                                    "during COMMIT: the change may or may not have been "
                                    f"applied ({first_line(exc)})") from None
            return out

    def _read(self, fn: Callable[[Txn], T]) -> T:
        return self._run(fn, _READ, lock=False, retry_commit=True)

    def _write(self, fn: Callable[[Txn], T]) -> T:
        """A rules write: one writer at a time across all nodes (module docstring)."""
        return self._run(fn, _WRITE, lock=True, retry_commit=False)

    def write_on_loop(self, fn: Callable[[Txn], None]) -> Awaitable[None] | None:
        """`write` asked from the running event loop and committed there, on the loop's
        own connection (store/pg_loop.py LoopWrites: no thread, so no wait for the GIL
        between the socket and the loop): fn's statements are gathered first, then sent
        as one transaction in one round trip. fn may only write, and only into CDR days
        already made. None when that connection is not up or fn needs more (a read, a
        day's partition): the caller then runs `write` on its thread. The awaitable raises
        psycopg.Error when the transaction failed; the caller's `write` then tries again
        (fn puts and deletes its own keys: running it twice is safe)."""
        writes = self._on_loop_writes
        loop = asyncio.get_running_loop()
        if writes is None or writes.loop is not loop:
            if writes is not None:
                writes.close()           # a loop before this one (tests run many)
            writes = self._on_loop_writes = LoopWrites(loop, self._connect_async)
        if not writes.ready():
            return None
        cur = _Statements()
        try:
            fn(_PgTxn(_KnownDays(self), cur))
        except _NotOnLoop:
            return None
        # A server that stops answering without closing: given up (and the caller's
        # `write` tries) after failover_s, as a thread's try would be.
        return asyncio.wait_for(writes.run(_WRITE, cur.statements), self.failover_s)

    async def _connect_async(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=max(1, int(self._timeout)),
            application_name=self.session_name)

    def write(self, fn: Callable[[Txn], T]) -> T:
        """A write of a module's own records (CDRs, journal, outbox): no rules lock; fn
        only puts and deletes keys of its own call or node, so running it again after a
        COMMIT of unknown outcome is safe."""
        return self._run(fn, _WRITE, lock=False, retry_commit=True)

    # -- the call path ----------------------------------------------------------------------
    def route(self, x: str, caller: str, now: float, ext: str | None = None) -> Binding | None:
        return self._route(x, caller, now, ext, time.monotonic() + self._lookup_patience())

    def _lookup_patience(self) -> float:
        return min(self.failover_s, LOOKUP_PATIENCE_S)

    def _route(self, x: str, caller: str, now: float, ext: str | None,
               deadline: float) -> Binding | None:
        # rules.route's lookup, without BEGIN/COMMIT: one round trip when the caller's key
        # (or, with an AXE extension, X + E) holds a live binding, two when X must be
        # scanned (each statement its own snapshot; a write between them changes only
        # whether a stranger hears 403 or 404).
        return self._run(lambda txn: self._route_in(txn, x, caller, now, ext), None,
                         lock=False, retry_commit=True, deadline=deadline)

    def route_on_loop(self, x: str, caller: str, now: float,
                      ext: str | None = None) -> asyncio.Future[Binding | None]:
        """`route` asked from the running event loop, answered there. The caller's key is
        read on the loop's own connection (store/pg_loop.py: no thread, so no wait for
        the GIL between the socket and the loop); an AXE extension, a miss (X must be
        scanned: a stranger, 403 or 404), and every lookup that connection cannot answer
        (not up yet, lost, an error) go to the lookup threads (`route_soon`), which ride
        out a failover. The patience counts from now either way. StoreBusy at once when
        the reads waiting are as many as the lookup queue holds."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self._lookup_patience()
        out: asyncio.Future[Binding | None] = loop.create_future()
        if ext is None:
            key = codec.route_key(self.keys, x, caller)
            answer = partial(self._answered_on_loop, out, x, caller, now, deadline)
            if self._loop_reads(loop).read(TABLES["route"].cols(key), answer):
                return out
        self._on_threads(out, self._route, x, caller, now, ext, deadline)
        return out

    def _on_threads(self, out: asyncio.Future[Binding | None],
                    fn: Callable[..., Binding | None], *args: Any) -> None:
        """`out` takes the outcome of fn(*args) run on the lookup threads; StoreBusy when
        their queue is full."""
        try:
            work = self.calls.submit(fn, *args)
        except StoreError as exc:
            out.set_exception(exc)
            return
        _settle(out, work)

    def loop_connected(self) -> dict[str, int]:
        """Whether the event loop's own connections are up, 1 or 0 (for /metrics)."""
        return {"lookups": int(self._on_loop is not None and self._on_loop.up),
                "batches": int(self._on_loop_writes is not None and self._on_loop_writes.up)}

    def _loop_reads(self, loop: asyncio.AbstractEventLoop) -> LoopReads:
        reads = self._on_loop
        if reads is None or reads.loop is not loop:
            if reads is not None:
                reads.close()            # a loop before this one (tests run many)
            reads = self._on_loop = LoopReads(
                loop, self._connect, _SQL["route"]["get_numbered"].encode(),
                patience_s=self._lookup_patience(), max_pending=self.calls.max_pending)
        return reads

    def _answered_on_loop(self, out: asyncio.Future[Binding | None], x: str, caller: str,
                          now: float, deadline: float, raw: bytes | StoreError | None
                          ) -> None:
        if out.done():
            return
        if isinstance(raw, StoreError):
            # The loop's connection could not answer: the threads try, within the patience.
            self._on_threads(out, self._route, x, caller, now, None, deadline)
            return
        try:
            binding = self._live_binding(raw, now)       # the second half of `_route_in` follows
        except Exception as exc:
            out.set_exception(exc)
            return
        if binding is not None:
            out.set_result(binding)
        else:
            self._on_threads(out, self._scan_x, x, now, deadline)

    def _scan_x(self, x: str, now: float, deadline: float) -> Binding | None:
        """The second half of `_route_in`: X's live binding for a caller it does not name."""
        return self._run(lambda txn: self._any_on_x(txn, x, now), None, lock=False,
                         retry_commit=True, deadline=deadline)

    def route_soon(self, x: str, caller: str, now: float,
                   ext: str | None = None) -> Future[Binding | None]:
        """`route` on the lookup threads; StoreBusy at once when the queue is full. The
        lookup's patience counts from now, not from when a thread takes it: while no
        primary answers, each lookup holds its thread for the whole patience, and lookups
        queued behind them would otherwise wait threads x patience each before theirs
        began (32 at once on 4 threads: the last failed after 16 s, not 2 s). One past its
        deadline when a thread takes it still gets one try (a healthy but busy store)."""
        return self.calls.submit(self._route, x, caller, now, ext,
                                 time.monotonic() + self._lookup_patience())

    # -- other modules' records -------------------------------------------------------------
    def db(self, name: str) -> str:
        """A named database's table (for modules that call LmdbStore.db); StoreError for a
        name the schema does not have."""
        _PgTxn._table(name)
        return name

    def count(self, name: str) -> int:
        def run(txn: Txn) -> int:
            assert isinstance(txn, _PgTxn)
            row = txn.cur.execute(_SQL[name]["count"]).fetchone()
            return int(row[0]) if row else 0
        return self._run(run, None, lock=False, retry_commit=True)

    def run_sql(self, fn: Callable[[psycopg.Cursor[Any]], T]) -> T:
        """fn(cursor) in a READ COMMITTED transaction, retried as `write` is: for the
        events outbox's queue statements (events/outbox.py), which are not key-value."""
        def run(txn: Txn) -> T:
            assert isinstance(txn, _PgTxn) and isinstance(txn.cur, psycopg.Cursor)
            return fn(txn.cur)
        return self._run(run, _WRITE, lock=False, retry_commit=True)

    def disk_bytes(self) -> int:
        """Bytes the database uses (pg_database_size), for the store size metric."""
        def run(txn: Txn) -> int:
            assert isinstance(txn, _PgTxn)
            row = txn.cur.execute("SELECT pg_database_size(current_database())").fetchone()
            return int(row[0]) if row else 0
        return self._run(run, None, lock=False, retry_commit=True)

    def sweep(self, now: float, limit: int = 1000) -> int:
        """Expired bindings (rules.py), and CDR partitions made ahead for the next days."""
        self.ensure_days_ahead(now)
        return super().sweep(now, limit)

    def close(self) -> None:
        if self._on_loop is not None:
            self._on_loop.close()
        if self._on_loop_writes is not None:
            self._on_loop_writes.close()
        self.background.shutdown(wait=True)
        self.calls.close()
        self.reads.close()
        self.pool.close()


def migrate_database(dsn: str) -> tuple[int, int]:
    """`sipmask store migrate`: bring the schema at `dsn` to this version; (from, to)."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StoreError(f"cannot connect to PostgreSQL at {_where(dsn)}: "
                         f"{first_line(exc)}") from None
    with conn:
        return migrate(conn)


def _pages(rows: Iterator[tuple[bytes, bytes]]) -> Iterator[list[tuple[bytes, bytes]]]:
    """A scan in lists of _CONVERT_PAGE rows; each list is read whole before it is given,
    so the caller may write the table between lists (keyset paging: _PgTxn.scan)."""
    page: list[tuple[bytes, bytes]] = []
    for row in rows:
        page.append(row)
        if len(page) >= _CONVERT_PAGE:
            yield page
            page = []
    if page:
        yield page


def _settle(out: asyncio.Future[T], work: Future[T]) -> None:
    """`out` (on its loop) takes `work`'s outcome (from a thread) when it comes."""
    def copy(done: asyncio.Future[T]) -> None:
        if out.done():
            return
        if done.cancelled():
            out.cancel()
        elif (exc := done.exception()) is not None:
            out.set_exception(exc)
        else:
            out.set_result(done.result())
    asyncio.wrap_future(work, loop=out.get_loop()).add_done_callback(copy)
