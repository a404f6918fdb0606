"""Bulk import rate: `sipmask import FILE` end to end, and store.create_many in-process.

    python3 bench/import.py                  # 300,000 bindings, 3 runs (a few minutes here)
    python3 bench/import.py --size 1000000

Baseline measured in the same run: raw LMDB puts of the same records (the binding under an
id made as create() makes it, and its two route keys; no rules, no audit), batched the same
way and synced on each commit like the store. The ratio says how much of the
disk layer's speed the rules, indexes and audit log leave. Target: >= 50,000 bindings/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb

from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.store import BindingRequest, LmdbStore, codec
from sipmask.store.base import Binding
from sipmask.store.crypto import Keyring

BATCH = 5000
PAIRS_PER_X = 4


def x_of(i: int) -> str:
    return f"7001{i // PAIRS_PER_X:011d}"


def write_csv(path: Path, size: int) -> None:
    with path.open("w") as out:
        out.write("mode,a,b,x,ttl,tenant\n")
        for i in range(size):
            out.write(f"axb,138{i:08d},139{i:08d},{x_of(i)},7200,\n")


def config_file(where: Path, size: int) -> Path:
    cfg = where / "bench.yaml"
    cfg.write_text(f"tenants:\n  bench:\n    token: t\n    pools: [{x_of(0)}-{x_of(size - 1)}]\n"
                   f"store:\n  path: {where / 'cli.lmdb'}\n  map_size_mb: 256\n")
    return cfg


def by_cli(where: Path, size: int) -> float:
    data = where / "in.csv"
    write_csv(data, size)
    started = time.perf_counter()
    # stderr passes through: the import's own progress line shows every 5 s.
    result = subprocess.run([sys.executable, "-m", "sipmask", "-c", str(config_file(where, size)),
                             "import", str(data)], stdout=subprocess.PIPE, text=True,
                            check=False)
    elapsed = time.perf_counter() - started
    summary = json.loads(result.stdout)
    if result.returncode != 0 or summary["imported"] != size:
        raise SystemExit(f"import failed: {summary}")
    return size / elapsed


def by_store(where: Path, size: int) -> float:
    store = LmdbStore(where / "api.lmdb", map_size=256 << 20)
    store.sync_tenants({"bench": TenantConfig("t", (NumberRange(x_of(0), x_of(size - 1)),))})

    def rows() -> Iterator[tuple[int, BindingRequest]]:
        for i in range(size):
            if i % 50_000 == 0:
                sys.stderr.write(f"create_many: {i:,}/{size:,}\n")
            yield i, BindingRequest("axb", f"138{i:08d}", f"139{i:08d}", x_of(i), 7200,
                                    "bench")
    started = time.perf_counter()
    made = sum(1 for o in store.create_many(rows(), batch=BATCH) if o.binding)
    elapsed = time.perf_counter() - started
    store.close()
    if made != size:
        raise SystemExit(f"create_many made {made} of {size}")
    return size / elapsed


def by_raw_lmdb(where: Path, size: int) -> float:
    env = lmdb.open(str(where / "raw.lmdb"), map_size=256 << 20, max_dbs=4)
    bindings, route = env.open_db(b"bindings"), env.open_db(b"route")
    keys = Keyring.generate()       # records and route keys as the store lays them out
    started = time.perf_counter()
    for first in range(0, size, BATCH):
        if first % 50_000 == 0:
            sys.stderr.write(f"raw lmdb: {first:,}/{size:,}\n")
        with env.begin(write=True) as txn:
            for i in range(first, min(first + BATCH, size)):
                now = time.time()
                b = Binding(codec.new_id(now), "axb", "bench", x_of(i), f"138{i:08d}",
                            f"139{i:08d}", now, now + 7200)
                raw = codec.encode_binding(b, keys)
                txn.put(b.id.encode(), raw, db=bindings)
                for key in codec.route_keys(keys, b):
                    txn.put(key, raw, db=route)
    elapsed = time.perf_counter() - started
    env.close()
    return size / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=300_000, help="bindings to import")
    parser.add_argument("--runs", type=int, default=3,
                        help="rounds of the three (each into new stores); best and median")
    args = parser.parse_args()
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg())
    rates: dict[str, list[float]] = {"raw": [], "store": [], "cli": []}
    for run in range(args.runs):
        sys.stderr.write(f"run {run + 1}/{args.runs}\n")
        where = Path(tempfile.mkdtemp(prefix="sipmask-bench-"))
        try:
            rates["raw"].append(by_raw_lmdb(where, args.size))
            rates["store"].append(by_store(where, args.size))
            rates["cli"].append(by_cli(where, args.size))
        finally:
            shutil.rmtree(where, ignore_errors=True)
    print(f"bindings {args.size:,}, {BATCH:,} per transaction, {args.runs} run(s); load "
          f"average before {load_before}, after "
          + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"  {'':26s} {'best':>10s} {'median':>10s}   ratio to the same run's baseline")
    for key, label in (("raw", "raw lmdb puts (baseline)"), ("store", "store.create_many"),
                       ("cli", "sipmask import FILE.csv")):
        got = rates[key]
        ratios = [r / base for r, base in zip(got, rates["raw"], strict=True)]
        ratio = "" if key == "raw" else (f"   best {max(ratios):.2f}, median "
                                         f"{statistics.median(ratios):.2f}")
        print(f"  {label:26s} {max(got):10,.0f} {statistics.median(got):10,.0f}/s{ratio}")
    best, median = max(rates["cli"]), statistics.median(rates["cli"])
    print(f"target 50,000/s end to end: {'met' if best >= 50_000 else 'NOT met'} "
          f"(best {best:,.0f}/s, median {median:,.0f}/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
