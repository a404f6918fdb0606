"""PostgreSQL driver choice: psycopg 3 (what store/postgres.py uses) against asyncpg, seen
from the event loop, with LMDB as the same-run baseline.

    python3 bench/store_pg.py                 # starts a throwaway server (Debian postgresql)
    python3 bench/store_pg.py --dsn URI       # or uses yours (it drops and re-makes `sipmask`)

Measured, alternating the drivers round by round on the same keys and the same server:
  lookup, 1 at a time   one route lookup awaited by the event loop: psycopg through the
                        store's lookup threads (route_soon + wrap_future), asyncpg awaited
                        directly; median µs per lookup
  lookup, 32 at once    the same with 32 lookups in flight: lookups per second
  create                store.create (every rule of rules.py, ~10 statements in one
                        transaction under the rules lock) one after another: creates per s.
                        rules.py is synchronous, so with asyncpg each statement is sent to
                        the loop's thread and waited for (run_coroutine_threadsafe): the
                        price of an async-only driver under synchronous rules
Ratios are against psycopg in the same run (>1: asyncpg faster); LMDB's figure is the floor
an embedded store gives.

Route lookups at scale (issue 14: 10 million bindings):

    python3 bench/store_pg.py --bindings 10000000 [--work DIR] [--sample 20000]

fills an LMDB store through the store's own bulk path (store.create_many: every rule,
codec.py's encoding, the audit log; 4 pairs per X, no expiry), then copies it key for key,
as `sipmask store copy` does, into PostgreSQL, the big tables with COPY (binary) and the
small ones with the store's put_many; so both stores hold exactly the same records. Then,
alternating PostgreSQL and LMDB round by round, lookups through the call path's entry
(as the engine's shell asks them: PostgreSQL's `route_on_loop`, LMDB's in place) on random
bindings: a bound caller (one statement) and a stranger (two: the X is scanned), one at a
time and 32 in flight: p50 and p99 µs, and lookups/s. The server gets shared_buffers 1GB
(of this machine's 23 GB); the rest is the OS page cache.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import psycopg

from sipmask.clock import SystemClock
from sipmask.config.schema import NumberRange, StoreConfig, TenantConfig
from sipmask.store import LmdbStore, codec, offload
from sipmask.store.base import Binding
from sipmask.store.crypto import Keyring, create_key_file
from sipmask.store.pg_schema import SCHEMA, TABLES, migrate
from sipmask.store.postgres import PostgresStore
from sipmask.store.rules import RuleStore, Txn

T = TypeVar("T")
TENANTS = {"demo": TenantConfig("t", (NumberRange.parse("700100000000000-700100099999999"),))}
_SQL = {name: t.sql() for name, t in TABLES.items()}


def _pg_params(sql: str) -> str:
    """psycopg's %s placeholders as asyncpg's $1, $2, ..."""
    parts = sql.split("%s")
    return "".join(part + (f"${n}" if n < len(parts) else "")
                   for n, part in enumerate(parts, 1))


class _AsyncpgTxn:
    """rules.Txn over asyncpg, called from a worker thread: each statement runs on the
    loop's thread and the worker waits for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection) -> None:
        self.loop, self.conn = loop, conn

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def get(self, db: str, key: bytes) -> bytes | None:
        row = self._call(self.conn.fetchrow(_pg_params(_SQL[db]["get"]), *TABLES[db].cols(key)))
        return None if row is None else bytes(row[0])

    def get_many(self, db: str, keys: list[bytes]) -> dict[bytes, bytes]:
        return {key: value for key in keys if (value := self.get(db, key)) is not None}

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._call(self.conn.execute(_pg_params(_SQL[db]["put"]), *TABLES[db].row(key), value))

    def insert(self, db: str, key: bytes, value: bytes) -> bool:
        status = self._call(self.conn.execute(_pg_params(_SQL[db]["insert"]),
                                              *TABLES[db].row(key), value))
        return bool(status.endswith(" 1"))

    def delete(self, db: str, key: bytes) -> None:
        self._call(self.conn.execute(_pg_params(_SQL[db]["delete"]), *TABLES[db].cols(key)))

    def delete_many(self, db: str, keys: list[bytes]) -> None:
        for key in keys:
            self.delete(db, key)

    def put_many(self, db: str, items: list[tuple[bytes, bytes]], overwrite: bool = True) -> int:
        added = 0
        for key, value in items:
            if overwrite and self.get(db, key) is None:
                added += 1
            if overwrite:
                self.put(db, key, value)
            else:
                added += self.insert(db, key, value)
        return added

    def put_rows(self, db: str, items: list[tuple[bytes, bytes]]) -> None:
        for key, value in items:
            self.put(db, key, value)

    def scan(self, db: str, start: bytes = b"",
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        t = TABLES[db]
        if reverse:
            rows = self._call(self.conn.fetch(_pg_params(_SQL[db]["last"]), 1024))
        else:
            rows = self._call(self.conn.fetch(_pg_params(_SQL[db]["from"]), *t.cols(start),
                                              1024))
        for key, value in rows:
            yield bytes(key), bytes(value)


class AsyncpgStore(RuleStore):
    """rules.py over asyncpg: one connection on a loop thread, rules on the caller's."""

    def __init__(self, dsn: str) -> None:
        super().__init__(SystemClock())
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.conn: asyncpg.Connection = asyncio.run_coroutine_threadsafe(
            asyncpg.connect(dsn), self.loop).result()

    def _run(self, fn: Callable[[Txn], T], begin: str, lock: bool) -> T:
        txn = _AsyncpgTxn(self.loop, self.conn)
        txn._call(self.conn.execute(begin))
        try:
            if lock:
                txn._call(self.conn.execute("SELECT pg_advisory_xact_lock(1)"))
            out = fn(txn)
        except BaseException:
            txn._call(self.conn.execute("ROLLBACK"))
            raise
        txn._call(self.conn.execute("COMMIT"))
        return out

    def _read(self, fn: Callable[[Txn], T]) -> T:
        return self._run(fn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", False)

    def _write(self, fn: Callable[[Txn], T]) -> T:
        return self._run(fn, "BEGIN", True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.conn.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


async def lookups_psycopg(store: PostgresStore, keys: list[tuple[str, str]],
                          parallel: int) -> list[float]:
    now = time.time()

    async def one(x: str, caller: str) -> float:
        started = time.perf_counter()
        found = await asyncio.wrap_future(store.route_soon(x, caller, now))
        assert found is not None
        return time.perf_counter() - started
    return await _drive(keys, parallel, one)


async def lookups_asyncpg(pool: asyncpg.Pool, sealed: Keyring, keys: list[tuple[str, str]],
                          parallel: int) -> list[float]:
    now = time.time()
    sql = _pg_params(_SQL["route"]["get"])

    async def one(x: str, caller: str) -> float:
        started = time.perf_counter()
        key = codec.route_key(sealed, x, caller)        # X and the caller's keyed hash
        row = await pool.fetchrow(sql, key[:15], key)
        assert row is not None and codec.decode_binding(bytes(row[0]), sealed).live(now)
        return time.perf_counter() - started
    return await _drive(keys, parallel, one)


async def _drive(keys: list[tuple[str, str]], parallel: int, one: Any) -> list[float]:
    times: list[float] = []
    queue = list(keys)

    async def worker() -> None:
        while queue:
            x, caller = queue.pop()
            times.append(await one(x, caller))
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return times


def creates(store: RuleStore, n: int, offset: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        store.create(mode="axb", tenant="demo", a=f"138{offset + i:08d}",
                     b=f"139{offset + i:08d}", ttl=0)
    return n / (time.perf_counter() - started)


def fresh_schema(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        migrate(conn)


def _asyncpg_dsn(dsn: str) -> str:
    """asyncpg refuses libpq's connect_timeout parameter in a URI."""
    base, _, query = dsn.partition("?")
    kept = "&".join(p for p in query.split("&") if p and not p.startswith("connect_timeout="))
    return base + (f"?{kept}" if kept else "")


def run(dsn: str, size: int, rounds: int, sample: int) -> None:
    fresh_schema(dsn)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    key_file = tmp / "store.key"
    create_key_file(key_file)                  # one key, both stores (PostgreSQL makes none)
    pg = PostgresStore(dsn, pool_size=40, call_workers=32, key_file=key_file)
    pg.sync_tenants(TENANTS)
    made: list[Binding] = []
    for chunk in range(0, size, 5000):
        made += [o.binding for o in pg.create_many(
            [(i, _req(i)) for i in range(chunk, min(size, chunk + 5000))],
            default_tenant="demo") if o.binding is not None]
    keys = [(b.x, b.a) for b in made]
    print(f"loaded {len(made):,} bindings through create_many in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
    lm = LmdbStore(tmp / "s", map_size=1 << 30, key_file=key_file)
    lm.sync_tenants(TENANTS)
    ap_store = AsyncpgStore(_asyncpg_dsn(dsn))
    results: dict[str, list[float]] = {}

    async def lookups() -> None:
        pool = await asyncpg.create_pool(_asyncpg_dsn(dsn), min_size=32, max_size=32)
        try:
            for r in range(rounds):
                rng = random.Random(r)
                pick = [rng.choice(keys) for _ in range(sample)]
                order = ("psycopg", "asyncpg") if r % 2 == 0 else ("asyncpg", "psycopg")
                for driver in order:
                    for parallel in (1, 32):
                        started = time.perf_counter()
                        if driver == "psycopg":
                            times = await lookups_psycopg(pg, pick, parallel)
                        else:
                            times = await lookups_asyncpg(pool, pg.keys, pick, parallel)
                        wall = time.perf_counter() - started
                        label = f"{driver} lookup x{parallel}"
                        results.setdefault(label + " µs", []).append(
                            statistics.median(times) * 1e6)
                        results.setdefault(label + " /s", []).append(len(pick) / wall)
        finally:
            await pool.close()
    asyncio.run(lookups())
    lm_started = time.perf_counter()
    lm_keys = keys[:sample]
    now = time.time()
    for x, caller in lm_keys:
        lm.route(x, caller, now)
    results["lmdb lookup x1 µs"] = [(time.perf_counter() - lm_started) / len(lm_keys) * 1e6]
    base = 10_000_000
    for r in range(rounds):
        order = ((pg, "psycopg"), (ap_store, "asyncpg"))
        for store, name in (order if r % 2 == 0 else order[::-1]):
            base += 1000
            results.setdefault(f"{name} create /s", []).append(creates(store, 200, base))
    results["lmdb create /s"] = [creates(lm, 200, 90_000_000)]
    ap_store.close()
    pg.close()
    lm.close()
    shutil.rmtree(tmp, ignore_errors=True)      # the LMDB store and the key file
    print(f"{size:,} bindings, {rounds} rounds x {sample} lookups (median of rounds)")
    for label, values in results.items():
        print(f"  {label:<28} {statistics.median(values):>12,.1f}")
    for metric in ("lookup x1 µs", "lookup x32 /s", "create /s"):
        a, p = (statistics.median(results[f"{d} {metric}"]) for d in ("asyncpg", "psycopg"))
        ratio = p / a if metric.endswith("µs") else a / p
        print(f"  asyncpg / psycopg, {metric:<14} {ratio:>6.2f}x  (>1: asyncpg faster)")


def _req(i: int) -> Any:
    from sipmask.store.base import BindingRequest
    return BindingRequest("axb", f"138{i:08d}", f"139{i:08d}", ttl=0)


# -- route lookups at scale -----------------------------------------------------------------
PAIRS_PER_X = 4
STRANGER = "13700000003"
SCALE_TENANT = "bench"
LMDB_BYTES_PER_BINDING = 650      # measured: 120 MB for 200,000 (bindings, 2 routes, audit)
PG_BYTES_PER_BINDING = 1100       # measured at 1,000,000 (heap, primary keys, WAL headroom)
_BIG = ("bindings", "route", "expiry", "xuse", "audit")   # COPY; the rest via put_many


def x_of(i: int) -> str:
    return f"7001{i // PAIRS_PER_X:011d}"


def a_of(i: int) -> str:
    return f"138{i:08d}"


def scale_tenants(n: int) -> dict[str, TenantConfig]:
    return {SCALE_TENANT: TenantConfig("t", (NumberRange(x_of(0), x_of(n - 1)),))}


class Progress:
    """One line on stderr every 5 s: done, rate, time left."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.started = self.last = time.monotonic()

    def __call__(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < 5:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        left = (self.total - done) / rate if rate else 0
        print(f"  {self.what}: {done:,}/{self.total:,}  {rate:,.0f}/s  "
              f"{left / 60:.1f} min left", file=sys.stderr, flush=True)


def fill_lmdb(path: Path, n: int, key_file: Path) -> LmdbStore:
    """n bindings through store.create_many (the rules, the codec, the audit log)."""
    store = LmdbStore(path, map_size=max(1 << 30, n * LMDB_BYTES_PER_BINDING * 2),
                      key_file=key_file)
    store.sync_tenants(scale_tenants(n))
    progress = Progress("LMDB create_many", n)
    from sipmask.store.base import BindingRequest

    def requests() -> Iterator[tuple[int, BindingRequest]]:
        for i in range(n):
            yield i, BindingRequest("axb", a_of(i), f"139{i:08d}", x_of(i), 0, SCALE_TENANT)
            if i % 50_000 == 0:
                progress(i)
    made = sum(1 for o in store.create_many(requests(), batch=50_000) if o.binding)
    progress(made, force=True)
    if made != n:
        sys.exit(f"only {made:,} of {n:,} bindings were made")
    return store


def copy_to_postgres(source: LmdbStore, target: PostgresStore) -> int:
    """Every record of `source` into `target`, key for key (sipmask store copy's mapping:
    pg_schema.TABLES, Table.row); the big tables by binary COPY. Both stores hold the same
    key (the records stay sealed as LMDB sealed them). Returns rows copied."""
    from sipmask.store.pg_copy import lmdb_counts
    counts = lmdb_counts(source)
    progress = Progress("COPY into PostgreSQL", sum(counts[name] for name in _BIG))
    rows = 0
    with psycopg.connect(target.dsn) as conn:
        for name in _BIG:
            table, db = TABLES[name], source.db(name)
            cols = (*table.columns, "v")
            sql = f"COPY {table.qname} ({', '.join(cols)}) FROM STDIN (FORMAT BINARY)"
            with conn.cursor() as cur, cur.copy(sql) as copy, source.env.begin() as txn:
                copy.set_types(["bytea"] * len(cols))
                for key, value in txn.cursor(db=db):
                    copy.write_row((*table.row(bytes(key)), bytes(value)))
                    rows += 1
                    if rows % 100_000 == 0:
                        progress(rows)
            conn.commit()
    progress(rows, force=True)
    for name in ("meta", "tenants", "pools"):
        db = source.db(name)
        with source.env.begin() as txn:
            items = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]

        def put(txn: Txn, name: str = name, items: list[tuple[bytes, bytes]] = items) -> int:
            return txn.put_many(name, items)
        target.write(put)
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")         # visibility map and statistics, as a
    return rows                                  # long-running database has them


async def timed_lookups(store: Any, keys: list[tuple[str, str]], parallel: int,
                        hit: bool) -> tuple[list[float], float]:
    """Each key through the call path's lookup, awaited on this loop, `parallel` in
    flight: (seconds per lookup, wall seconds)."""
    now = time.time()
    times: list[float] = []
    queue = list(keys)

    async def worker() -> None:
        while queue:
            x, caller = queue.pop()
            started = time.perf_counter()
            found = await offload.ask(store, x, caller, now)   # as the engine's shell
            times.append(time.perf_counter() - started)
            assert found is not None and (found.a == caller) == hit, (x, caller, found)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return times, time.perf_counter() - started


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1e6


def scale(n: int, work: Path, rounds: int, sample: int, dsn: str | None,
          lookup_threads: int) -> None:
    free = shutil.disk_usage(work).free
    need = n * (LMDB_BYTES_PER_BINDING + (0 if dsn else PG_BYTES_PER_BINDING))
    print(f"{n:,} bindings: about {need / 1e9:.1f} GB needed in {work}, "
          f"{free / 1e9:.1f} GB free", file=sys.stderr)
    if need > free * 0.9:
        sys.exit("not enough disk: run with fewer --bindings (see the module docstring)")
    server = None
    if dsn is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.support.postgres import bindir, start_server
        found = bindir()
        if found is None:
            sys.exit("PostgreSQL is not installed (Debian package postgresql)")
        server = start_server(found, settings={
            "shared_buffers": "1GB", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
            "maintenance_work_mem": "512MB"})
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        dsn = server.dsn("bench")
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=work))
    try:
        key_file = tmp / "store.key"
        create_key_file(key_file)          # one key, both stores (PostgreSQL makes none)
        started = time.monotonic()
        lm = fill_lmdb(tmp / "lmdb", n, key_file)
        filled = time.monotonic() - started
        fresh_schema(dsn)
        # The call path's lookup threads as `sipmask serve` has them (store.lookup_threads).
        pg = PostgresStore(dsn, call_workers=lookup_threads, key_file=key_file)
        started = time.monotonic()
        rows = copy_to_postgres(lm, pg)
        copied = time.monotonic() - started
        lm_bytes = sum(f.stat().st_size for f in (tmp / "lmdb").iterdir())
        print(f"filled: LMDB create_many {n / filled:,.0f} bindings/s ({lm_bytes / 1e9:.2f} "
              f"GB); COPY {rows:,} rows in {copied:.0f} s ({n / copied:,.0f} bindings/s, "
              f"{pg.disk_bytes() / 1e9:.2f} GB)", flush=True)
        results: dict[str, list[float]] = {}

        async def measure() -> None:
            for r in range(rounds):
                rng = random.Random(r)
                picks = [rng.randrange(n) for _ in range(sample)]
                hits = [(x_of(i), a_of(i)) for i in picks]
                strangers = [(x_of(i), STRANGER) for i in picks[: sample // 4]]
                stores = (("postgres", pg), ("lmdb", lm))
                for name, store in stores if r % 2 == 0 else stores[::-1]:
                    for kind, keys in (("bound caller", hits), ("stranger", strangers)):
                        for parallel in (1, 32):
                            times, wall = await timed_lookups(store, keys, parallel,
                                                              kind == "bound caller")
                            label = f"{name:<8} {kind:<12} x{parallel:<2}"
                            results.setdefault(label + " p50 µs", []).append(_pct(times, .5))
                            results.setdefault(label + " p99 µs", []).append(_pct(times, .99))
                            results.setdefault(label + " /s", []).append(len(keys) / wall)
        asyncio.run(measure())
        pg.close()
        lm.close()
        print(f"{n:,} bindings, {rounds} rounds x {sample:,} random lookups (median of rounds; "
              f"the call path's lookup on an asyncio loop; {lookup_threads} lookup threads); "
              f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")
        for label, values in results.items():
            print(f"  {label:<34} {statistics.median(values):>12,.1f}")
        for kind in ("bound caller", "stranger"):
            for parallel in (1, 32):
                pg50, lm50 = (statistics.median(results[f"{s:<8} {kind:<12} x{parallel:<2}"
                                                        " p50 µs"]) for s in ("postgres", "lmdb"))
                print(f"  postgres / lmdb p50, {kind}, x{parallel}: {pg50 / lm50:,.0f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            with contextlib.suppress(Exception):
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="a PostgreSQL to use (its `sipmask` schema is re-made)")
    parser.add_argument("--size", type=int, default=20_000, help="bindings loaded")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sample", type=int, default=2000, help="lookups per round")
    parser.add_argument("--bindings", type=int,
                        help="route lookups at this many bindings, PostgreSQL and LMDB")
    parser.add_argument("--lookup-threads", type=int, default=StoreConfig().lookup_threads,
                        help="PostgreSQL lookup threads (default: store.lookup_threads's)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the --bindings LMDB store goes (and the server's data)")
    args = parser.parse_args()
    if args.bindings:
        tempfile.tempdir = str(args.work)      # the server's data directory too
        scale(args.bindings, args.work, args.rounds, args.sample, args.dsn,
              args.lookup_threads)
        return
    if args.dsn:
        run(args.dsn, args.size, args.rounds, args.sample)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.support.postgres import bindir, start_server
    found = bindir()
    if found is None:
        sys.exit("PostgreSQL is not installed (Debian package postgresql)")
    server = start_server(found)
    try:
        with psycopg.connect(server.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        run(server.dsn("bench"), args.size, args.rounds, args.sample)
    finally:
        with contextlib.suppress(Exception):
            server.stop()


if __name__ == "__main__":
    main()
