"""Binds per second through the HTTP API on loopback, against direct store calls.

    python3 bench/api_bind.py [--n 20000] [--inflight 32,64] [--baseline-n 400] [--repeat 3]
    python3 bench/api_bind.py --store postgres [--dsn URI] [--inflight 32] [--pin CPU]

`--store postgres` runs every line below on PostgreSQL too, in the same round as LMDB (a
throwaway server from Debian's postgresql, durable: fsync, synchronous_commit and
full_page_writes on, as LMDB syncs each commit; or `--dsn`, whose `sipmask` schema is
dropped and made again before each line), and prints PostgreSQL / LMDB per round.

The API server runs in a child process, started with `start_api` on uvloop as `sipmask
serve` does; the client keeps `--inflight` keep-alive connections with one POST in flight
on each (no pipelining: HTTP clients of an API do not pipeline, and a pipelined connection
is served one request at a time anyway). Every answer must be 201; after the run the
parent opens the store and reads back every binding the Locations named.
Baselines measured in the same run on the same disk:
  store.create   one create per call, in-process (each commit waits for its fsync);
  create_many    batches of the first `--inflight`, in-process: what group commit reaches
                 with no HTTP in the way.
The ratio printed is API binds/s over the store.create baseline. Target: >= 3,000 binds/s.
Each line also gives the server's CPU per request (all its threads: HTTP on the loop and
the store on the writer thread) and the client's, since both share the machine's cores,
and on PostgreSQL the statements the server sent per bind (each a round trip on the writer
thread: tests.support.postgres.counted_statements); the summary gives the best and the
median of `--repeat` rounds and the load average.

Reading the figures: a commit takes the creates that queued while the one before it was on
disk, so at K in flight it holds about K/2 of them (the other half is in HTTP, answered or
asking again) and binds/s is about K / (2 x commit time). A commit's time is two fdatasyncs
plus the store's CPU for the batch, so a slow or shared disk (the fdatasync line) or a busy
CPU (the server CPU line; the writer thread and the loop share one GIL) both lower it.

Prerequisites: the project's venv (uvloop is a default dependency on CPython outside
Windows; without it both sides fall back to asyncio's loop). No other tool: the client is
asyncio.Protocol code that costs about a tenth of the server's CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

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
from sipmask.store.crypto import create_key_file  # noqa: E402
from sipmask.store.lmdb import open_store  # noqa: E402

TOKEN = "bench-token"
POOL = "700100000000000-700100000099999"
B = "13900000002"


def config(where: str, key: Path) -> Config:
    """The bench's config on `where`: a PostgreSQL URI, or an LMDB store's directory; `key`
    the store key (store.key_file; a PostgreSQL store never makes it, so the round does)."""
    store = (StoreConfig(backend="postgres", dsn=where, key_file=key)
             if where.startswith("postgresql://") else StoreConfig(path=Path(where),
                                                                    key_file=key))
    return Config(api=ApiConfig(HostPort("127.0.0.1", 0)), store=store,
                  tenants={"bench": TenantConfig(TOKEN, (NumberRange.parse(POOL),))})


@dataclass
class Target:
    """A store kind to measure: LMDB stores under the round's directory, or one
    PostgreSQL database whose schema is made afresh for each measurement."""

    name: str
    dsn: str | None = None

    def fresh(self, root: Path, label: str) -> str:
        if self.dsn is None:
            return str(root / f"{label}.lmdb")
        import psycopg

        from sipmask.store.pg_schema import SCHEMA, migrate
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            migrate(conn)
        return self.dsn


def a_number(i: int) -> str:
    return f"138{i:08d}"


# -- baselines ------------------------------------------------------------------------------
def baseline_create(where: str, key: Path, n: int) -> float:
    store = open_store(config(where, key))
    try:
        start = time.perf_counter()
        for i in range(n):
            store.create(mode="axb", tenant="bench", a=a_number(i), b=B, actor="api")
        return n / (time.perf_counter() - start)
    finally:
        store.close()


def baseline_create_many(where: str, key: Path, n: int, batch: int) -> float:
    store = open_store(config(where, key))
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
async def serve(where: str, key: Path) -> None:
    """Serve until stdin closes; "start"/"stop" lines bracket the measured interval, whose
    CPU time (every thread of this process) is reported on a CPU line, and on PostgreSQL
    the statements sent meanwhile on a STATEMENTS line."""
    from sipmask.api import start_api
    from sipmask.api.app import STATE
    from tests.support.postgres import counted_statements

    store = open_store(config(where, key))
    runner = await start_api(config(where, key), store)
    assert runner is not None
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    loop = asyncio.get_running_loop()
    cpu = 0.0
    counts: dict[str, int] = {}
    with contextlib.ExitStack() as counting:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "start":
                cpu = time.process_time()
                if where.startswith("postgresql://"):
                    counts = counting.enter_context(counted_statements())
            elif line.strip() == "stop":
                print(f"CPU {time.process_time() - cpu}", flush=True)
                if where.startswith("postgresql://"):
                    counting.close()
                    print(f"STATEMENTS {json.dumps(dict(counts))}", flush=True)
    writer = runner.app[STATE].writer
    stats = {"commits": writer.commits, "created": writer.created}
    await runner.cleanup()
    store.close()
    print(f"STATS {json.dumps(stats)}", flush=True)


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# -- the client -----------------------------------------------------------------------------
class _Connection(asyncio.Protocol):
    """One keep-alive connection: send a POST, read its answer, send the next."""

    def __init__(self, drive: _Drive) -> None:
        self.drive = drive
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.sent = 0.0
        self.index = -1
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: cast, not assert.
        self.transport = cast(asyncio.Transport, transport)
        self.drive.ready.append(self)

    def send_next(self) -> None:
        assert self.transport is not None
        self.index = self.drive.take()
        if self.index < 0:
            self.transport.close()
            return
        self.sent = time.perf_counter()
        self.transport.write(self.drive.requests[self.index])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].decode("latin-1")
        lowered = head.lower()
        at = lowered.find("\r\ncontent-length:")
        length = int(head[at + 17:head.index("\r\n", at + 2)]) if at >= 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        answer, self.buffer = self.buffer[end + 4:end + 4 + length], self.buffer[end + 4 + length:]
        if not head.startswith("HTTP/1.1 201 "):
            self.drive.fail(RuntimeError(f"create {self.index}: {head.splitlines()[0]!r} "
                                         f"{answer!r}"))
            return
        at = lowered.find("\r\nlocation:")
        location = head[at + 11:head.find("\r\n", at + 2) % (len(head) + 1)].strip()
        self.drive.done(self.index, location, time.perf_counter() - self.sent)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.index >= 0:
            self.drive.fail(RuntimeError(f"connection lost during create {self.index}"))


class _Drive:
    def __init__(self, requests: list[bytes]) -> None:
        self.requests = requests
        self.next = 0
        self.ready: list[_Connection] = []
        self.locations: list[str] = [""] * len(requests)
        self.latencies: list[float] = []
        self.error: BaseException | None = None
        self.finished = asyncio.get_running_loop().create_future()

    def take(self) -> int:
        if self.next >= len(self.requests) or self.error is not None:
            return -1
        self.next += 1
        return self.next - 1

    def done(self, index: int, location: str, latency: float) -> None:
        self.locations[index] = location
        self.latencies.append(latency)
        if len(self.latencies) == len(self.requests) and not self.finished.done():
            self.finished.set_result(None)

    def fail(self, exc: BaseException) -> None:
        self.error = self.error or exc
        if not self.finished.done():
            self.finished.set_result(None)


def post(port: int, i: int) -> bytes:
    body = json.dumps({"mode": "axb", "a": a_number(i), "b": B}).encode()
    return (f"POST /v1/bindings HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Driven:
    rate: float
    latencies: list[float]
    locations: list[str]
    client_cpu: float        # seconds of this process's CPU while driving


async def drive(port: int, first: int, n: int, inflight: int) -> Driven:
    """`inflight` connections (opened before the clock starts), requests first..first+n-1.

    asyncio.Protocol callbacks, requests built before the clock starts: both processes
    share two cores here, and a client on aiohttp (or on asyncio streams) spent a third to
    all of the server's CPU per request, so the figure measured the client.
    """
    loop = asyncio.get_running_loop()
    run = _Drive([post(port, first + i) for i in range(n)])
    connections = [(await loop.create_connection(lambda: _Connection(run), "127.0.0.1",
                                                 port))[1] for _ in range(inflight)]
    cpu, start = time.process_time(), time.perf_counter()
    for connection in connections:
        connection.send_next()
    await run.finished
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    for connection in connections:
        assert connection.transport is not None
        connection.index = -1
        connection.transport.close()
    await asyncio.gather(*(c.closed for c in connections))
    if run.error is not None:
        raise run.error
    return Driven(n / elapsed, sorted(run.latencies), run.locations, cpu)


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


@dataclass
class ApiRun:
    inflight: int
    rate: float
    latencies: list[float]
    server_cpu_us: float     # per request, every thread of the server process
    client_cpu_us: float
    per_commit: float
    statements: dict[str, int]    # PostgreSQL: what the server sent, by verb and table


WARMUP = 500    # requests before the clock starts: imports, caches, the store's first pages


def api_run(where: str, key: Path, n: int, inflight: int, pin: int | None = None) -> ApiRun:
    """One server child on a fresh store, driven with `inflight` requests in flight; then
    every binding the answers named is read back from the store. `pin`: the child and
    every thread it starts on that one core (as deploy/ gives each node a core)."""
    child = subprocess.Popen([sys.executable, __file__, "--serve", where, "--key-file", str(key)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)},
                             preexec_fn=None if pin is None
                             else (lambda: os.sched_setaffinity(0, {pin})))
    assert child.stdin is not None and child.stdout is not None
    try:
        port = int(_tagged(child.stdout, "PORT"))
        warm = run_loop(drive(port, 0, WARMUP, inflight))
        child.stdin.write("start\n")
        child.stdin.flush()
        driven: Driven = run_loop(drive(port, WARMUP, n, inflight))
        child.stdin.write("stop\n")
        child.stdin.flush()
        server_cpu = float(_tagged(child.stdout, "CPU"))
        statements: dict[str, int] = (json.loads(_tagged(child.stdout, "STATEMENTS"))
                                      if where.startswith("postgresql://") else {})
    finally:
        child.stdin.close()
        stats: dict[str, int] = json.loads(_tagged(child.stdout, "STATS") or "{}")
        child.wait(30)
    verify(where, key, warm.locations + driven.locations)
    return ApiRun(inflight, driven.rate, driven.latencies, server_cpu / n * 1e6,
                  driven.client_cpu / n * 1e6,
                  stats["created"] / stats["commits"] if stats.get("commits") else 0.0,
                  statements)


def verify(where: str, key: Path, locations: list[str]) -> None:
    """Each answered create is a binding in the store, of the a-number it was asked for."""
    ids = [location.rpartition("/")[2] for location in locations]
    assert len(set(ids)) == len(ids) and all(ids), "every 201 names its own binding"
    store = open_store(config(where, key))
    try:
        for i, binding_id in enumerate(ids):
            binding = store.get(binding_id, tenant="bench")
            assert binding.a == a_number(i), (binding_id, binding.a, i)
    finally:
        store.close()


TARGET = {"lmdb": 3000, "postgres": 5000}       # binds/s (issue 14: PostgreSQL >= 5,000)


@dataclass
class Round:
    store: str
    fsync_ms: float
    direct: float
    grouped: float
    runs: list[ApiRun]


def one_round(root: Path, target: Target, n: int, baseline_n: int,
              inflights: list[int], pin: int | None = None) -> Round:
    root.mkdir(exist_ok=True)
    key = root / f"{target.name}.key"
    create_key_file(key)                   # each fresh store below is sealed with it
    direct = baseline_create(target.fresh(root, "direct"), key, baseline_n)
    grouped = baseline_create_many(target.fresh(root, "many"), key, n, inflights[0])
    return Round(target.name, fsync_ms(root), direct, grouped,
                 [api_run(target.fresh(root, f"api{k}"), key, n, k, pin) for k in inflights])


def report(r: Round, n: int, baseline_n: int, first_inflight: int) -> None:
    print(f"[{r.store}] disk: fdatasync p50 {r.fsync_ms:.2f} ms (an LMDB commit syncs data "
          "and meta; a PostgreSQL commit its WAL)")
    print(f"[{r.store}] baseline store.create (1 per commit):  {r.direct:7.0f} binds/s  "
          f"(n={baseline_n})")
    print(f"[{r.store}] baseline create_many (batch {first_inflight}):    {r.grouped:7.0f} "
          f"binds/s  (n={n})")
    for run in r.runs:
        p50 = run.latencies[len(run.latencies) // 2] * 1000
        p99 = run.latencies[int(len(run.latencies) * 0.99)] * 1000
        sent = (f"{sum(run.statements.values()) / n:.2f} statements/bind  "
                if run.statements else "")
        print(f"[{r.store}] API POST /v1/bindings, {run.inflight:3d} in flight: "
              f"{run.rate:7.0f} binds/s  (n={n}) p50 {p50:.1f} ms  p99 {p99:.1f} ms  "
              f"{run.per_commit:.1f} binds/commit  {sent}CPU/request server "
              f"{run.server_cpu_us:.0f} us client {run.client_cpu_us:.0f} us  ratio to "
              f"store.create {run.rate / r.direct:.1f}x  to create_many "
              f"{run.rate / r.grouped:.2f}x", flush=True)


def summary(rounds: list[Round], inflights: list[int]) -> None:
    directs = [r.direct for r in rounds]
    store = rounds[0].store
    print(f"[{store}] baseline store.create: best {max(directs):.0f}  median "
          f"{statistics.median(directs):.0f} binds/s")
    for j, inflight in enumerate(inflights):
        rates = [r.runs[j].rate for r in rounds]
        ratios = [r.runs[j].rate / r.direct for r in rounds]
        server = statistics.median(r.runs[j].server_cpu_us for r in rounds)
        sent = [sum(r.runs[j].statements.values()) / len(r.runs[j].latencies) for r in rounds
                if r.runs[j].statements]
        best, target = max(rates), TARGET[store]
        print(f"[{store}] API {inflight:3d} in flight: best {best:.0f}  median "
              f"{statistics.median(rates):.0f} binds/s  same-round ratio to store.create "
              f"median {statistics.median(ratios):.1f}x  server CPU/request median "
              f"{server:.0f} us  "
              + (f"statements/bind median {statistics.median(sent):.2f}  " if sent else "")
              + f"target >= {target}/s {'met' if best >= target else 'NOT met'}"
              f" (median {'met' if statistics.median(rates) >= target else 'NOT met'})")


def postgres_server(dsn: str | None) -> tuple[str, Any]:
    """`dsn`, or a throwaway durable server's (and the server, to stop at the end)."""
    if dsn is not None:
        return dsn, None
    from tests.support.postgres import DURABLE, throwaway_database
    try:
        return throwaway_database(DURABLE)
    except RuntimeError as exc:
        sys.exit(str(exc))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--inflight", default="32,64",
                        help="comma-separated in-flight counts, one run each (default 32,64)")
    parser.add_argument("--baseline-n", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--store", choices=("lmdb", "postgres"), default="lmdb",
                        help="postgres: PostgreSQL too, LMDB alongside in each round")
    parser.add_argument("--dsn", help="--store postgres: this server, not a throwaway one")
    parser.add_argument("--pin", type=int, metavar="CPU",
                        help="run the API server child on this one core, all its threads "
                             "(sched_setaffinity), as deploy/ gives each node a core")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--key-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_loop(serve(args.serve, args.key_file))
        return 0
    inflights = [int(k) for k in args.inflight.split(",")]
    server = None
    targets = [Target("lmdb")]
    if args.store == "postgres":
        dsn, server = postgres_server(args.dsn)
        targets.append(Target("postgres", dsn))

    load_before = os.getloadavg()
    rounds: dict[str, list[Round]] = {t.name: [] for t in targets}
    try:
        with tempfile.TemporaryDirectory(prefix="sipmask-bench-") as tmp:
            for i in range(args.repeat):
                print(f"-- round {i + 1}/{args.repeat}", flush=True)
                # Alternate which store goes first, so neither always gets the cooler CPU.
                for target in targets if i % 2 == 0 else targets[::-1]:
                    made = one_round(Path(tmp) / f"round{i}", target, args.n,
                                     args.baseline_n, inflights, args.pin)
                    rounds[target.name].append(made)
                    report(made, args.n, args.baseline_n, inflights[0])
    finally:
        if server is not None:
            server.stop()
    load_after = os.getloadavg()

    print(f"-- summary of {args.repeat} rounds; load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    for of_store in rounds.values():
        summary(of_store, inflights)
    if len(rounds) == 2:
        for j, inflight in enumerate(inflights):
            ratios = [p.runs[j].rate / m.runs[j].rate
                      for p, m in zip(rounds["postgres"], rounds["lmdb"], strict=True)]
            print(f"PostgreSQL / LMDB, API {inflight} in flight, same round: median "
                  f"{statistics.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
