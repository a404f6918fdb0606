"""What only the PostgreSQL store has: writers on many connections at once, key order kept
by the tables' derived columns, schema versions, the call path's futures, and a DSN's
password kept out of every message. (The rules themselves: test_store_rules.py, which
runs against this store too.)"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
import structlog
from psycopg._queries import MAX_CACHED_STATEMENT_PARAMS  # psycopg keeps these parsed

from sipmask.clock import FakeClock
from sipmask.config import loader
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.errors import ConfigError, ConflictError, PoolExhausted, StoreError
from sipmask.store import LmdbStore, codec
from sipmask.store.base import BindingRequest
from sipmask.store.crypto import KeyFileError, KeyMismatch, create_key_file
from sipmask.store.offload import Offload, StoreBusy, lookup
from sipmask.store.pg_schema import LATEST, SCHEMA, day_of_key, migrate, partition_sql
from sipmask.store.postgres import PostgresStore, migrate_database, redact
from sipmask.store.rules import Txn
from tests.support.postgres import counted_round_trips, counted_statements
from tests.support.store import TENANTS, A, B, X


@pytest.fixture
def stores(pg_dsn: str, pg_key: Path,
           clock: FakeClock) -> Iterator[Callable[[], PostgresStore]]:
    """Factory of stores on the test database, each with its own connections: as many
    nodes (or CLI processes) would have. All closed at teardown."""
    made: list[PostgresStore] = []

    def make() -> PostgresStore:
        s = PostgresStore(pg_dsn, clock, pool_size=2, call_workers=1, key_file=pg_key)
        made.append(s)
        return s
    first = make()
    first.sync_tenants(TENANTS)
    yield make
    for s in made:
        s.close()


def race(n: int, fn: Callable[[int], object]) -> list[object]:
    """fn(0..n-1) on n threads released together; each result or the exception raised."""
    gate = threading.Barrier(n)

    def one(i: int) -> object:
        gate.wait()
        try:
            return fn(i)
        except Exception as exc:
            return exc
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_writers_on_many_connections_never_both_take_a_pair(
        stores: Callable[[], PostgresStore]) -> None:
    nodes = [stores() for _ in range(8)]
    others = [f"1390000{i:04d}" for i in range(8)]
    results = race(8, lambda i: nodes[i].create(mode="axb", tenant="demo", a=A, b=others[i],
                                                x=X))
    made = [r for r in results if not isinstance(r, Exception)]
    assert len(made) == 1, results
    assert all(isinstance(r, ConflictError) and r.field == "a"
               for r in results if isinstance(r, Exception))
    assert len(nodes[0].list(x=X)) == 1


def test_allocation_from_many_connections_gives_each_x_once(
        stores: Callable[[], PostgresStore]) -> None:
    # AXN takes an X whole: 12 nodes allocating at once from a pool of 10 Xs get 10
    # different Xs, and the other two hear that the pool is exhausted.
    nodes = [stores() for _ in range(12)]
    results = race(12, lambda i: nodes[i].create(mode="axn", tenant="demo",
                                                 a=f"1380000{i:04d}"))
    xs = [r.x for r in results if not isinstance(r, Exception)]   # type: ignore[attr-defined]
    assert len(xs) == 10 and len(set(xs)) == 10
    assert sum(isinstance(r, PoolExhausted) for r in results) == 2


def _keys(rng: random.Random) -> list[bytes]:
    """Keys that cross the derived columns' edges: shorter than an X, one X with many
    numbers after it, CDR times across days, and the largest day a key can name."""
    keys = {rng.randbytes(rng.randint(1, 20)) for _ in range(150)}
    keys |= {X.encode() + str(i).encode() for i in range(90)}
    day_us = 86_400_000_000
    keys |= {(d * day_us + rng.randrange(day_us)).to_bytes(8, "big") + rng.randbytes(3)
             for d in (20_000, 20_001, 20_002) for _ in range(30)}
    keys |= {b"\xff" * 8 + b"x", b"\x00", X.encode()}   # LMDB takes no empty key
    return sorted(keys)


@pytest.mark.parametrize("db", ["route", "cdrs", "expiry"])
def test_scans_keep_byte_order_across_pages_like_lmdb(stores: Callable[[], PostgresStore],
                                                      tmp_path: Path, db: str) -> None:
    # route is keyed (x, k) and cdrs (day, k): the order must still be the keys' own.
    keys = _keys(random.Random(db))
    rows = [(k, b"v" + k) for k in keys]
    pg, lm = stores(), LmdbStore(tmp_path / "l", map_size=1 << 22, key_file=tmp_path / "k")
    try:
        for s in (pg, lm):
            s.write(lambda txn, s=s: txn.put_many(db, rows))  # type: ignore[misc]

        def scans(txn: Txn) -> list[list[tuple[bytes, bytes]]]:
            starts = [b"", X.encode(), keys[len(keys) // 2], b"\xff" * 9]
            return ([list(txn.scan(db, start)) for start in starts]
                    + [list(txn.scan(db, reverse=True))])
        assert pg.read(scans) == lm.read(scans)
        assert len(pg.read(scans)[0]) == len(keys)
    finally:
        lm.close()


def test_put_many_counts_new_keys_and_overwrites(
        stores: Callable[[], PostgresStore]) -> None:
    s = stores()
    assert s.write(lambda txn: txn.put_many("route", [(b"a", b"1"), (b"b", b"1")])) == 2
    assert s.write(lambda txn: txn.put_many("route", [(b"a", b"3"), (b"d", b"3")])) == 1
    assert s.read(lambda txn: list(txn.scan("route"))) == [
        (b"a", b"3"), (b"b", b"1"), (b"d", b"3")]


def test_a_cdr_key_goes_to_its_day_partition(stores: Callable[[], PostgresStore],
                                              pg_dsn: str) -> None:
    s = stores()
    at = 1_800_000_000.0
    key = int(at * 1_000_000).to_bytes(8, "big") + b"call"
    s.write(lambda txn: txn.put("cdrs", key, b"record"))
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(f"SELECT tableoid::regclass::text, day FROM {SCHEMA}.cdrs").fetchone()
    assert row is not None
    assert row[0] == f"{SCHEMA}.cdrs_20270115" and str(row[1]) == "2027-01-15"
    assert day_of_key(key) == (int(at) // 86400)


def test_schema_versions_migrate_once_and_a_newer_one_is_refused(pg_dsn: str,
                                                                 pg_key: Path) -> None:
    assert migrate_database(pg_dsn) == (LATEST, LATEST)     # the fixture migrated it
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        assert migrate(conn) == (0, LATEST)
        conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (version) VALUES (%s)",
                     (LATEST + 1,))
    with pytest.raises(StoreError, match=f"schema version {LATEST + 1}; this sipmask knows"):
        PostgresStore(pg_dsn, key_file=pg_key)


def test_route_soon_is_a_future_and_a_full_queue_refuses_at_once(
        stores: Callable[[], PostgresStore], clock: FakeClock) -> None:
    s = stores()
    made = s.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    assert s.route_soon(X, A, clock.wall()).result(timeout=10) == made
    assert lookup(s, X, "13700000003", clock.wall()).result(timeout=10) == made   # 403 case
    release = threading.Event()
    calls = Offload(workers=1, max_pending=2)
    try:
        running = [calls.submit(release.wait), calls.submit(release.wait)]
        with pytest.raises(StoreBusy):
            calls.submit(release.wait)
        assert calls.refused == 1
        release.set()
        assert all(f.result(timeout=10) for f in running)
        assert calls.submit(lambda: 7).result(timeout=10) == 7   # the slots came back
    finally:
        release.set()
        calls.close()


def test_lookup_on_lmdb_runs_in_place(tmp_path: Path, clock: FakeClock) -> None:
    store = LmdbStore(tmp_path / "l", clock, map_size=1 << 20, key_file=tmp_path / "k")
    try:
        store.sync_tenants(TENANTS)
        made = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
        future = lookup(store, X, A, clock.wall())
        assert future.done() and future.result() == made
    finally:
        store.close()


def test_the_password_never_reaches_a_message(pg_server: object, pg_key: Path) -> None:
    dsn = "postgresql://sipmask:s3cret-pw@127.0.0.1:1/sipmask?connect_timeout=1"
    assert "s3cret-pw" not in redact(dsn) and "127.0.0.1" in redact(dsn)
    started = time.monotonic()
    with pytest.raises(StoreError) as exc:
        PostgresStore(dsn, connect_timeout_s=1, key_file=pg_key)
    assert "s3cret-pw" not in str(exc.value) and "127.0.0.1:1/sipmask" in str(exc.value)
    assert time.monotonic() - started < 30


def test_postgres_needs_a_dsn_and_the_error_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        loader.loads(loader.default_text(), ["store.backend=postgres"])
    assert "store.dsn" in str(exc.value) and "required" in str(exc.value)
    config = loader.loads(loader.default_text(), ["store.backend=postgres",
                                                  "store.dsn=postgresql://h/db"])
    assert config.store.backend == "postgres" and config.store.dsn == "postgresql://h/db"


def test_a_new_database_takes_the_key_quietly_and_holds_to_it(pg_dsn: str, pg_key: Path,
                                                              tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        first = PostgresStore(pg_dsn, pool_size=1, call_workers=1, key_file=pg_key)
    try:
        assert logs == []                                    # nothing to seal: no word
        assert first.read(lambda txn: txn.get("meta", b"key_id")) == \
            first.keys.fingerprint.encode()
        assert first.schema_version() == codec.SCHEMA_VERSION
    finally:
        first.close()
    other = tmp_path / "other.key"
    create_key_file(other)
    with pytest.raises(KeyMismatch, match=f"sealed with key {first.keys.fingerprint}"):
        PostgresStore(pg_dsn, pool_size=1, call_workers=1, key_file=other)


def test_a_missing_key_file_is_refused_before_connecting(tmp_path: Path) -> None:
    missing = tmp_path / "none.key"
    with pytest.raises(KeyFileError) as exc:       # port 1: nothing listens, never reached
        PostgresStore("postgresql://u@127.0.0.1:1/db?connect_timeout=1", key_file=missing)
    text = str(exc.value)
    assert text.startswith(f"store.key_file: {missing} does not exist") and "\n" not in text
    assert "never makes its key" in text and not missing.exists()


@pytest.mark.parametrize("name", ["route", "xuse", "history", "cdrs", "cdr_binding",
                                  "bindings"])
def test_many_keys_are_read_and_counted_through_the_primary_key(
        pg_dsn: str, name: str) -> None:
    # get_many (a batch's reads), delete_many (a CDR batch's journal entries) and put_many
    # (create_many's batches, `sipmask store copy`, which counts the keys already there in
    # the statement that writes each 500 rows) name
    # keys by every primary-key column. On a table whose primary key is (derived column,
    # k), keys by k alone cannot use the index: a scan of the whole table per 500 rows,
    # so bulk loads slowed as the table grew (`store copy` of 200,000 bindings: 838/s).
    from sipmask.store.pg_schema import TABLES
    table = TABLES[name]
    sql = table.sql()
    keys = [i.to_bytes(8, "big") + b"13800000001" + bytes(7) for i in range(3)]
    assert len(table.key_arrays(keys)) == len(table.pk)   # cdr_binding: k only, not day
    rows = [value for key in keys for value in (*table.row(key), b"v")]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")     # a plan that can use the index, does
        if table.kind == "by_day":                   # the keys' day has a partition
            conn.execute(partition_sql(day_of_key(keys[0])))
        for statement, params in (
                (sql["get_many"], table.key_arrays(keys)),
                (sql["delete_many"], table.key_arrays(keys)),
                (sql["put_many"].format(rows=", ".join([sql["row"]] * len(keys))),
                 [*table.key_arrays(keys), *rows])):
            plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement,
                                                            params).fetchall())
            assert "Seq Scan" not in plan and "Index" in plan, plan


@pytest.mark.parametrize(("pool", "b_of", "waits"), [
    # The API bench's shape: Xs mostly free, and the same B on every binding.
    ("700300000000000-700300000099999", lambda i: B, 3),
    # Ten Xs for 96 pairs: every X soon carries pairs, so each allocation's probes read
    # X uses and route keys (a stranger's pair may sit on any of them): one more wait.
    ("700300000000000-700300000000009", lambda i: f"1390000{i:04d}", 4),
])
def test_a_batch_of_creates_costs_few_statements_and_waits(
        stores: Callable[[], PostgresStore], pool: str,
        b_of: Callable[[int], str], waits: int) -> None:
    # Issue 14's API binds: the API's writer commits the creates that queue together
    # through create_many, and every statement of a batch is work on the writer thread.
    # The batch's route keys and X uses are read in one statement per table
    # (Txn.get_many) before its rules run, and written with multi-row INSERTs, so a batch
    # costs about twenty statements whatever its size (before: 4.4 per binding here in
    # the first shape, 19.5 in the second, each rule's read its own statement). Those
    # that nobody reads an answer of go without waiting for it (pipeline mode), and the
    # tenant and audit sequence are asked ahead of the pools (Txn.get_later), the new
    # bindings inserted without reading back a count (Txn.insert_rows), so a batch waits
    # on the server three times in the first shape: pools, X uses, COMMIT (before: 8,
    # then 13, and 5 per binding before that). And no statement has more parameters
    # than psycopg keeps parsed: one INSERT of 64 route rows (194 parameters) was parsed
    # again on every execute, a quarter of the batch's CPU.
    s = stores()
    s.sync_tenants({**TENANTS, "big": TenantConfig("big-token", (NumberRange.parse(pool),))})
    batch, batches = 32, 3
    made = 0
    with s.pool.connection() as conn:
        pass           # the store's one connection (nothing else runs): traced below
    sizes: list[int] = []
    with counted_statements(sizes) as counts, counted_round_trips(conn) as trips:
        for first in range(0, batch * batches, batch):
            rows = [(i, BindingRequest("axb", f"1380000{i:04d}", b_of(i), tenant="big"))
                    for i in range(first, first + batch)]
            made += sum(o.binding is not None for o in s.create_many(rows, actor="api"))
    assert made == batch * batches
    assert sum(counts.values()) <= made * 0.7, counts
    assert trips["Sync"] == batches and trips["Query"] == 0, trips
    waited = trips["Flush"] - batches + trips["Sync"]   # each pipeline's last Flush follows
    assert waited <= waits * batches, trips               # its Sync: no wait of its own
    assert max(sizes) <= MAX_CACHED_STATEMENT_PARAMS, sorted(sizes)[-5:]


def test_a_write_that_fails_unread_rolls_the_transaction_back_whole(
        stores: Callable[[], PostgresStore]) -> None:
    # In pipeline mode a statement whose answer nobody reads is sent without waiting for
    # it: its failure is reported by the Sync that carries COMMIT, and the writes before
    # it in the transaction must not be committed (nor the failure taken for a broken
    # connection: "may or may not have been applied" is for those only).
    s = stores()

    def run(cur: psycopg.Cursor[object]) -> None:
        cur.execute(f"INSERT INTO {SCHEMA}.meta (k, v) VALUES (%s, %s)", (b"kept", b"1"))
        cur.execute("SELECT 1 / 0")
    with pytest.raises(psycopg.errors.DivisionByZero):
        s.run_sql(run)
    assert s.read(lambda txn: txn.get("meta", b"kept")) is None
    s.write(lambda txn: txn.put("meta", b"kept", b"2"))   # the connection still serves
    assert s.read(lambda txn: txn.get("meta", b"kept")) == b"2"
