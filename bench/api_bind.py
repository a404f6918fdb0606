"""Binds per second through the HTTP API on loopback, against direct store calls.

    python3 bench/api_bind.py [--n 6000] [--inflight 32] [--baseline-n 400]

The API server runs in a child process (its own core), started with `start_api` as `sipmask
serve` does; the client keeps `--inflight` concurrent keep-alive requests going.
Baselines measured in the same run on the same disk:
  store.create   one create per call, in-process (each commit waits for its fsync);
  create_many    batches of `--inflight`, in-process: the ceiling group commit can reach.
The ratio printed is API binds/s over the store.create baseline. Target: >= 3,000 binds/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sipmask.config.schema import (  # noqa: E402
    ApiConfig,
    Config,
    HostPort,
    NumberRange,
    StoreConfig,
    TenantConfig,
)
from sipmask.store.base import BindingRequest  # noqa: E402
from sipmask.store.lmdb import open_store  # noqa: E402

TOKEN = "bench-token"
POOL = "700100000000000-700100000099999"
B = "13900000002"


def config(path: Path) -> Config:
    return Config(api=ApiConfig(HostPort("127.0.0.1", 0)), store=StoreConfig(path=path),
                  tenants={"bench": TenantConfig(TOKEN, (NumberRange.parse(POOL),))})


def a_number(i: int) -> str:
    return f"138{i:08d}"


# -- baselines ------------------------------------------------------------------------------
def baseline_create(path: Path, n: int) -> float:
    store = open_store(config(path))
    try:
        start = time.perf_counter()
        for i in range(n):
            store.create(mode="axb", tenant="bench", a=a_number(i), b=B, actor="api")
        return n / (time.perf_counter() - start)
    finally:
        store.close()


def baseline_create_many(path: Path, n: int, batch: int) -> float:
    store = open_store(config(path))
    try:
        start = time.perf_counter()
        for first in range(0, n, batch):
            chunk = [(i, BindingRequest("axb", a_number(i), B, tenant="bench"))
                     for i in range(first, min(n, first + batch))]
            for outcome in store.create_many(chunk, actor="api"):
                assert outcome.binding is not None, outcome
        return n / (time.perf_counter() - start)
    finally:
        store.close()


# -- the server child -----------------------------------------------------------------------
async def serve(path: Path) -> None:
    from sipmask.api import start_api
    from sipmask.api.app import STATE

    store = open_store(config(path))
    runner = await start_api(config(path), store)
    assert runner is not None
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)      # the parent closes stdin to stop
    writer = runner.app[STATE].writer
    stats = {"commits": writer.commits, "created": writer.created}
    await runner.cleanup()
    store.close()
    print(f"STATS {json.dumps(stats)}", flush=True)


def run_loop(coro: object) -> object:
    try:
        import uvloop
        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


# -- the client -----------------------------------------------------------------------------
async def drive(port: int, n: int, inflight: int) -> tuple[float, list[float]]:
    """`inflight` keep-alive connections, one request in flight on each.

    A minimal HTTP/1.1 client on asyncio streams rather than aiohttp's: both processes
    share two cores here, and aiohttp's client spent about as much CPU per request as the
    server, so the figure measured the client. This one costs a few tens of microseconds.
    """
    counter = iter(range(n))
    latencies: list[float] = []
    head = (f"POST /v1/bindings HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n")

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for i in counter:
                body = json.dumps({"mode": "axb", "a": a_number(i), "b": B}).encode()
                sent = time.perf_counter()
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                if status_line.split()[1] != b"201":
                    raise RuntimeError(f"create {i}: {status_line!r} {answer!r}")
                latencies.append(time.perf_counter() - sent)
        finally:
            writer.close()
            await writer.wait_closed()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - start
    return n / elapsed, sorted(latencies)


def _tagged(stream: IO[str], tag: str) -> str:
    """The child's line starting with `tag` (its log lines share stdout)."""
    for line in stream:
        if line.startswith(tag + " "):
            return line[len(tag) + 1:].strip()
    return ""


def fsync_ms(directory: Path, rounds: int = 50) -> float:
    """Median fdatasync of one page here: what every commit waits for (LMDB syncs twice)."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        times = []
        for i in range(rounds):
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            start = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
        return sorted(times)[rounds // 2] * 1000
    finally:
        os.close(fd)
        path.unlink()


def api_run(root: Path, n: int, inflight: int) -> tuple[float, list[float], dict[str, int]]:
    """One server child on a fresh store, driven with `inflight` requests in flight."""
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(root / f"api{inflight}")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.stdin is not None and child.stdout is not None
    try:
        port = int(_tagged(child.stdout, "PORT"))
        rate, latencies = asyncio.run(drive(port, n, inflight))
    finally:
        child.stdin.close()
        stats: dict[str, int] = json.loads(_tagged(child.stdout, "STATS") or "{}")
        child.wait(30)
    return rate, latencies, stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6000)
    parser.add_argument("--inflight", default="32,64",
                        help="comma-separated in-flight counts, one run each (default 32,64)")
    parser.add_argument("--baseline-n", type=int, default=400)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_loop(serve(args.serve))
        return 0
    inflights = [int(k) for k in args.inflight.split(",")]

    with tempfile.TemporaryDirectory(prefix="sipmask-bench-") as tmp:
        root = Path(tmp)
        sync = fsync_ms(root)
        direct = baseline_create(root / "direct.lmdb", args.baseline_n)
        grouped = baseline_create_many(root / "many.lmdb", args.n, inflights[0])
        runs = [(k, *api_run(root, args.n, k)) for k in inflights]

    print(f"disk: fdatasync p50 {sync:.2f} ms (an LMDB commit syncs data and meta)")
    print(f"baseline store.create (1 per commit):  {direct:7.0f} binds/s  (n={args.baseline_n})")
    print(f"baseline create_many (batch {inflights[0]}):    {grouped:7.0f} binds/s  (n={args.n})")
    for inflight, rate, latencies, stats in runs:
        p50 = latencies[len(latencies) // 2] * 1000
        p99 = latencies[int(len(latencies) * 0.99)] * 1000
        per_commit = stats["created"] / stats["commits"] if stats.get("commits") else 0.0
        print(f"API POST /v1/bindings, {inflight:3d} in flight: {rate:7.0f} binds/s  "
              f"(n={args.n}) p50 {p50:.1f} ms  p99 {p99:.1f} ms  {per_commit:.1f} binds/commit"
              f"  ratio to store.create {rate / direct:.1f}x  to create_many "
              f"{rate / grouped:.2f}x  target >= 3000/s {'met' if rate >= 3000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
