"""Seconds of failed lookups during a database failover: what a node answers 503 for.

    python3 bench/failover.py [--outages 2,5,10] [--runs 2]

For each outage length: a primary with a synchronous hot standby (tests/support/postgres.py,
on 127.0.0.41 and .42), a store on the multi-host DSN, and a lookup asked every 50 ms
through the lookup threads (`offload.lookup`: where an INVITE's lookup goes once the event
loop's own connection is lost, as it is the moment the primary dies) while the primary
is killed (`pg_ctl stop -m immediate`) and, `outage` seconds later, the standby promoted.
Printed per run: the window of lookups that failed (by when they were asked: the INVITEs
that would get 503 once the engine answers StoreError with 503), how long after the kill
and after the promotion the first lookup succeeded, and how long failed ones took.

The baseline in the same run is the outage itself: a lookup can only succeed once a
primary answers, so "503 window / outage" is the figure, and it should be about
(outage - lookup patience) / outage: a lookup asked in the outage's last 2 s waits for the
promotion and succeeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sipmask.config.schema import NumberRange, TenantConfig  # noqa: E402
from sipmask.errors import StoreError  # noqa: E402
from sipmask.store import offload  # noqa: E402
from sipmask.store.base import Binding  # noqa: E402
from sipmask.store.crypto import create_key_file  # noqa: E402
from sipmask.store.postgres import PostgresStore  # noqa: E402
from tests.support.postgres import bindir, start_pair  # noqa: E402

EVERY_S = 0.05
TENANTS = {"demo": TenantConfig("t", (NumberRange.parse("700100000000000-700100000000099"),))}


@dataclass
class Asked:
    at: float
    ok: bool | None = None
    took: float = 0.0
    error: str = ""


def one(outage: float) -> tuple[float, float, float, float, float]:
    """(failed window s, kill -> first success s, promotion -> first success s,
    median s a failed lookup took, max s)."""
    found = bindir()
    if found is None:
        sys.exit("PostgreSQL is not installed (Debian package postgresql)")
    keys = tempfile.TemporaryDirectory(prefix="failover-key-")
    key_file = Path(keys.name) / "store.key"
    create_key_file(key_file)                   # a PostgreSQL store never makes its key
    try:
        pair = start_pair(found, key_file)
    except BaseException:
        keys.cleanup()
        raise
    store = PostgresStore(pair.dsn(), key_file=key_file)
    asked: list[Asked] = []
    stop = threading.Event()
    try:
        store.sync_tenants(TENANTS)
        made = store.create(mode="axb", tenant="demo", a="13800000001", b="13900000002",
                            ttl=0)

        def ask() -> None:
            while not stop.is_set():
                entry = Asked(time.monotonic())
                asked.append(entry)

                def done(f: Future[Binding | None], entry: Asked = entry) -> None:
                    entry.took = time.monotonic() - entry.at
                    error = f.exception()
                    entry.ok = error is None
                    entry.error = "" if error is None else f"{type(error).__name__}: {error}"
                try:
                    offload.lookup(store, made.x, made.a, time.time()).add_done_callback(done)
                except StoreError as exc:   # StoreBusy: refused at once, a 503 too
                    entry.ok, entry.took, entry.error = False, 0.0, str(exc)
                stop.wait(EVERY_S)
        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        time.sleep(0.5)
        killed = time.monotonic()
        pair.primary.kill()
        dead = time.monotonic()          # lookups asked from now on cannot reach it
        time.sleep(max(0.0, killed + outage - time.monotonic()))
        promoted = time.monotonic()
        pair.standby.promote()
        deadline = time.monotonic() + 30
        while not any(a.ok and a.at > promoted for a in asked):
            if time.monotonic() > deadline:
                raise RuntimeError("lookups never came back")
            time.sleep(0.01)
        time.sleep(0.5)
        stop.set()
        asker.join(5)
        time.sleep(3)                         # the last lookups end
    finally:
        store.close()
        pair.stop()
        keys.cleanup()
    failed = [a for a in asked if a.ok is False]
    quick = {a.error for a in failed if a.took < 1.0}
    if quick:
        print(f"  failed at once: {sorted(quick)}", flush=True)
    first_ok = min(a.at + a.took for a in asked if a.ok and a.at > dead)
    window = (max(a.at for a in failed) - min(a.at for a in failed)) if failed else 0.0
    return (window, first_ok - killed, first_ok - promoted,
            statistics.median(a.took for a in failed) if failed else 0.0,
            max((a.took for a in failed), default=0.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", default="2,5,10", help="seconds, comma-separated")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    outages = [float(s) for s in args.outages.split(",")]
    for run in range(args.runs):
        for outage in outages if run % 2 == 0 else outages[::-1]:
            window, gap, lag, took, most = one(outage)
            print(f"outage {outage:4.1f} s: lookups failed for {window:5.2f} s of asking "
                  f"({window / outage:.2f} of the outage); first success {gap:5.2f} s "
                  f"after the kill, {lag:4.2f} s after the promotion; "
                  + (f"a failed lookup took {took:.2f} s (median), {most:.2f} s at most"
                     if most else "none failed"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
