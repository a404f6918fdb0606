"""Call-path lookup rate: store.route(X, caller) on a store of --size bindings, one core.

    python3 bench/lookup.py                   # 1,000,000 bindings (about 1-2 min here)
    python3 bench/lookup.py --size 10000000   # 10M (loading takes several minutes)

Baselines measured in the same run on the same keys:
  raw get   one LMDB read transaction + get per lookup (the floor for "fresh on every call")
  dict      a plain Python dict lookup (the floor for any Python lookup at all)
Also prints bytes per binding on disk (all indexes and the audit log included).
Target: >= 300,000 lookups/s.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sipmask.clock import SystemClock
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.store import BindingRequest, LmdbStore, codec
from sipmask.store.base import Binding
from sipmask.store.rules import Txn, _Work

PAIRS_PER_X = 4


def progress(label: str, done: int, total: int, started: float) -> None:
    rate = done / max(time.perf_counter() - started, 1e-9)
    sys.stderr.write(f"\r{label}: {done:,}/{total:,} ({done / total:.0%}) {rate:,.0f}/s ")
    sys.stderr.flush()


def x_of(i: int) -> str:
    return f"7001{i // PAIRS_PER_X:011d}"


def load_records(store: LmdbStore, size: int) -> float:
    """Write the bindings and their indexes exactly as create() lays them out
    (rules._Work.put_binding), without the rule checks and the audit entry: the lookup
    side is what this bench measures, and loading 1M through the rules takes minutes."""
    started = time.perf_counter()
    now = time.time()
    for first in range(0, size, 50_000):
        progress("loading", first, size, started)

        def batch(txn: Txn, first: int = first) -> None:
            work = _Work(txn, now, "import")
            for i in range(first, min(first + 50_000, size)):
                work.put_binding(Binding(codec.new_id(now), "axb", "bench", x_of(i),
                                         f"138{i:08d}", f"139{i:08d}", now, now + 7200))
        store._write(batch)
    progress("loading", size, size, started)
    sys.stderr.write("\n")
    return size / (time.perf_counter() - started)


def load(store: LmdbStore, size: int) -> float:
    def rows() -> Iterator[tuple[int, BindingRequest]]:
        for i in range(size):
            if i % 20_000 == 0:
                progress("loading", i, size, started)
            yield i, BindingRequest("axb", f"138{i:08d}", f"139{i:08d}", x_of(i),
                                    ttl=7200, tenant="bench")
    started = time.perf_counter()
    failed = sum(1 for o in store.create_many(rows(), actor="import", batch=20_000)
                 if o.binding is None)
    progress("loading", size, size, started)
    sys.stderr.write("\n")
    if failed:
        raise SystemExit(f"{failed} bindings refused while loading")
    return size / (time.perf_counter() - started)


def timed(fn: Callable[[], object], n: int) -> float:
    started = time.perf_counter()
    fn()
    return n / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000, help="bindings in the store")
    parser.add_argument("--lookups", type=int, default=500_000, help="lookups per measurement")
    parser.add_argument("--path", help="store directory (default: a temporary one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--via-rules", action="store_true",
                        help="load through create_many (rules + audit; slower, and the "
                             "bytes per binding then include the audit log)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    where = Path(args.path) if args.path else Path(tempfile.mkdtemp(prefix="sipmask-bench-"))
    try:
        store = LmdbStore(where / "s.lmdb", SystemClock(), map_size=256 << 20)
        xs = (args.size + PAIRS_PER_X - 1) // PAIRS_PER_X
        pool = NumberRange.parse(f"{x_of(0)}-{x_of(args.size - 1)}")
        store.sync_tenants({"bench": TenantConfig("t", (pool,))})
        load_rate = (load if args.via_rules else load_records)(store, args.size)

        picks = [rng.randrange(args.size) for _ in range(args.lookups)]
        keys = [(x_of(i), f"{rng.choice(('138', '139'))}{i:08d}") for i in picks]
        strangers = [(x_of(i), f"137{i:08d}") for i in picks[: args.lookups // 5]]
        now = time.time()
        route = store.route
        env, route_db = store.env, store.db("route")
        raw_keys = [(x + c).encode() for x, c in keys]
        plain = {k: k for k in raw_keys}

        def by_route() -> None:
            for x, caller in keys:
                if route(x, caller, now) is None:
                    raise SystemExit(f"lost binding {x}")

        def by_raw_get() -> None:
            for k in raw_keys:
                with env.begin(db=route_db) as txn:
                    txn.get(k)

        def by_dict() -> None:
            for k in raw_keys:
                plain.get(k)

        def by_stranger() -> None:
            for x, caller in strangers:
                route(x, caller, now)

        by_route()   # warm the page cache the same way for every contender
        rates = {"route": timed(by_route, len(keys)), "raw get": timed(by_raw_get, len(keys)),
                 "dict": timed(by_dict, len(keys)),
                 "route, stranger": timed(by_stranger, len(strangers))}
        disk = store.disk_bytes()
        per_db = {}
        psize = env.stat()["psize"]
        with env.begin() as txn:
            for name in ("bindings", "route", "expiry", "xuse", "audit"):
                st = txn.stat(store.db(name))
                pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                per_db[name] = pages * psize
        store.close()

        print(f"bindings {args.size:,} on {xs:,} Xs ({PAIRS_PER_X} pairs each); loaded "
              f"{'through the rules' if args.via_rules else 'as records'} "
              f"at {load_rate:,.0f}/s")
        for name, rate in rates.items():
            print(f"  {name:16s} {rate:12,.0f} lookups/s")
        print(f"route / raw get  {rates['route'] / rates['raw get']:.2f}")
        print(f"route / dict     {rates['route'] / rates['dict']:.3f}")
        print(f"target 300,000/s: {'met' if rates['route'] >= 300_000 else 'NOT met'}")
        print(f"disk {disk / 1e6:,.1f} MB, {disk / args.size:,.0f} bytes per binding "
              "(" + ", ".join(f"{k} {v / args.size:,.0f}" for k, v in per_db.items()) + ")")
    finally:
        if not args.path:
            shutil.rmtree(where, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
