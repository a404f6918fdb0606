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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.store import LmdbStore, codec
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

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._call(self.conn.execute(_pg_params(_SQL[db]["put"]), *TABLES[db].row(key), value))

    def insert(self, db: str, key: bytes, value: bytes) -> bool:
        status = self._call(self.conn.execute(_pg_params(_SQL[db]["insert"]),
                                              *TABLES[db].row(key), value))
        return bool(status.endswith(" 1"))

    def delete(self, db: str, key: bytes) -> None:
        self._call(self.conn.execute(_pg_params(_SQL[db]["delete"]), *TABLES[db].cols(key)))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="a PostgreSQL to use (its `sipmask` schema is re-made)")
    parser.add_argument("--size", type=int, default=20_000, help="bindings loaded")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sample", type=int, default=2000, help="lookups per round")
    args = parser.parse_args()
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
