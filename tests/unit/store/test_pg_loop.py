"""The call path's PostgreSQL work done from the event loop (store/pg_loop.py):
- lookups (PostgresStore.route_on_loop) answered on the loop's own connection with no
  lookup thread, the rest (a stranger's scan, an extension, a lost connection) on the
  threads, and every lookup answered once, whatever happens to that connection;
- CDR and journal batches (cdr/group.py through write_on_loop) committed on the loop, and
  on the writer thread whenever the loop cannot (not connected, lost, a day's partition to
  make, a failed statement), with no record lost or written twice.
Real PostgreSQL server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sipmask.cdr.group import CdrGroupCommit
from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrLog
from sipmask.clock import FakeClock
from sipmask.errors import StoreError
from sipmask.store.base import Binding
from sipmask.store.offload import StoreBusy
from sipmask.store.pg_loop import LoopReads
from sipmask.store.pg_schema import day_of_key, partition_name
from sipmask.store.postgres import PostgresStore
from tests.support.store import TENANTS, A, B, X

STRANGER = "13700000003"


@pytest.fixture
def store(pg_dsn: str, pg_key: Path, clock: FakeClock) -> Iterator[PostgresStore]:
    s = PostgresStore(pg_dsn, clock, pool_size=2, call_workers=2, key_file=pg_key)
    s.sync_tenants(TENANTS)
    yield s
    s.close()


def counting_threads(store: PostgresStore) -> list[str]:
    """The names of the functions the store's lookup threads are given, from now on."""
    ran: list[str] = []
    submit = store.calls.submit

    def counted(fn: Callable[..., Any], *args: Any) -> Any:
        ran.append(fn.__name__)
        return submit(fn, *args)
    store.calls.submit = counted  # type: ignore[method-assign]
    return ran


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_lookups_are_answered_on_the_loop_with_no_thread(store: PostgresStore,
                                                         clock: FakeClock) -> None:
    made = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    ran = counting_threads(store)
    now = clock.wall()

    async def flow() -> tuple[Binding | None, list[Binding | None]]:
        # The first lookup finds the loop's connection not made yet: the threads answer it
        # while it is made.
        first = await store.route_on_loop(X, A, now)
        reads = store._on_loop
        assert reads is not None
        await until(lambda: reads.up)
        asked = [store.route_on_loop(X, A if i % 3 else B, now) for i in range(60)]
        asked.append(store.route_on_loop("700100000000999", A, now))     # bound to nobody
        asked.append(store.route_on_loop(X, STRANGER, now))              # 403: X scanned
        return first, list(await asyncio.gather(*asked))

    first, answers = asyncio.run(flow())
    assert first == made
    assert answers[:60] == [made] * 60             # each answered once, each its own answer
    assert answers[60] is None and answers[61] == made
    # The threads took the first lookup, and then only the scans of X for the unbound
    # callers: 2 of 62.
    assert ran == ["_route", "_scan_x", "_scan_x"]
    assert store._on_loop is not None and store._on_loop.sent == 62
    assert store.loop_connected()["lookups"] == 1    # /metrics


def test_a_lost_loop_connection_sends_its_lookups_to_the_threads_then_comes_back(
        store: PostgresStore, clock: FakeClock, pg_dsn: str) -> None:
    made = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    now = clock.wall()

    async def flow() -> tuple[list[Binding | None], list[str], Binding | None, int]:
        await store.route_on_loop(X, A, now)
        reads = store._on_loop
        assert reads is not None
        reads.retry_s = 0.2
        await until(lambda: reads.up)
        pid = reads._pg.backend_pid
        ran = counting_threads(store)
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            # Its server process ends while lookups wait on it: they are sent, and held
            # by a lock on the table until then.
            admin.execute("BEGIN")
            admin.execute("LOCK TABLE sipmask.route IN ACCESS EXCLUSIVE MODE")
            asked = [store.route_on_loop(X, A, now) for _ in range(20)]
            await asyncio.sleep(0.2)
            assert len(reads._waiting) == 20 and not any(f.done() for f in asked)
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            admin.execute("COMMIT")
            answers = list(await asyncio.gather(*asked))
        lost = list(ran)
        await until(lambda: not reads.up)
        await asyncio.sleep(0.3)                 # past retry_s: the next lookup reconnects
        await store.route_on_loop(X, A, now)
        await until(lambda: reads.up)
        sent = reads.sent
        after = await store.route_on_loop(X, A, now)
        return answers, lost, after, reads.sent - sent

    answers, lost, after, sent = asyncio.run(flow())
    assert answers == [made] * 20                # none lost, none answered twice
    assert lost == ["_route"] * 20               # the threads answered what was in flight
    assert after == made and sent == 1           # and the loop's connection is back


def test_a_read_unanswered_for_the_patience_gives_up_the_connection(pg_dsn: str) -> None:
    async def flow() -> tuple[list[object], bool, float]:
        loop = asyncio.get_running_loop()
        reads = LoopReads(loop, lambda: psycopg.connect(pg_dsn, autocommit=True),
                          b"SELECT v FROM (SELECT pg_sleep(2), $1::bytea AS v) s",
                          patience_s=0.3, max_pending=4)
        try:
            assert not reads.read([b"x"], lambda _: None)      # not up: nothing sent
            await until(lambda: reads.up)
            got: list[object] = []
            started = time.monotonic()
            assert reads.read([b"x"], got.append)
            await until(lambda: bool(got))
            return got, reads.up, time.monotonic() - started
        finally:
            reads.close()

    got, up, took = asyncio.run(flow())
    assert len(got) == 1 and isinstance(got[0], StoreError)
    assert "no answer within 0.3 s" in str(got[0])
    assert not up and took < 1.5                 # not the statement's 2 s


def test_reads_past_the_queue_are_refused_at_once_and_answers_never_come_inside_read(
        pg_dsn: str) -> None:
    async def flow() -> tuple[list[object], list[object]]:
        loop = asyncio.get_running_loop()
        reads = LoopReads(loop, lambda: psycopg.connect(pg_dsn, autocommit=True),
                          b"SELECT $1::bytea", patience_s=5, max_pending=2)
        try:
            reads.read([b"a"], lambda _: None)
            await until(lambda: reads.up)
            got: list[object] = []
            assert reads.read([b"one"], got.append) and reads.read([b"two"], got.append)
            with pytest.raises(StoreBusy):
                reads.read([b"three"], got.append)
            inside = list(got)
            await until(lambda: len(got) == 2)
            return inside, got
        finally:
            reads.close()

    inside, got = asyncio.run(flow())
    assert inside == [] and got == [b"one", b"two"]


def test_close_gives_back_the_loop_connection(store: PostgresStore, clock: FakeClock,
                                              pg_dsn: str) -> None:
    store.create(mode="axb", tenant="demo", a=A, b=B, x=X)

    async def flow() -> int:
        await store.route_on_loop(X, A, clock.wall())
        reads = store._on_loop
        assert reads is not None
        await until(lambda: reads.up)
        pid: int = reads._pg.backend_pid
        store.close()
        assert not reads.up
        return pid

    pid = asyncio.run(flow())
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        deadline = time.monotonic() + 10
        while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                            (pid,)).fetchone() != (0,):
            assert time.monotonic() < deadline, "the loop's session is still open"
            time.sleep(0.05)


CALL = Cdr(call_id="c", tenant="demo", binding_id="b1", x=X, caller=A, callee=B,
           direction="a_to_b", invite_at=0.0, ring_at=None, answer_at=None, end_at=None,
           duration_s=0.0, release_side=None, sip_status=200, unconnected_cause="none")


class Counted(CdrLog):
    """A CdrLog that counts the batches its writer thread commits."""

    on_thread = 0

    def write_batch(self, ops: Any) -> None:
        self.on_thread += 1
        super().write_batch(ops)


def calls(now: float, n: int, tag: str) -> tuple[list[Cdr], list[Cdr]]:
    """n answered calls' journal entries and their final records."""
    up = [replace(CALL, call_id=f"{tag}{i}", invite_at=now, answer_at=now + 1)
          for i in range(n)]
    return up, [replace(c, end_at=now + 3, duration_s=2.0, release_side="caller") for c in up]


def test_cdr_batches_commit_on_the_loop_and_on_the_thread_only_when_it_cannot(
        store: PostgresStore, clock: FakeClock) -> None:
    log = Counted(store)
    group = CdrGroupCommit(log)
    now = clock.wall()
    up, ended = calls(now, 30, "c")

    async def flow() -> tuple[int, int]:
        # Not up yet: on the thread, which also makes the day's CDR partition if needed.
        await group.write(replace(CALL, call_id="first", invite_at=now, end_at=now))
        first = log.on_thread
        writes = store._on_loop_writes
        assert writes is not None
        await until(lambda: writes.up)
        await asyncio.gather(*(group.call_up(c) for c in up))
        assert sorted(c.call_id for c in log.calls_up()) == sorted(c.call_id for c in up)
        await asyncio.gather(*(group.write(c) for c in ended))
        return first, writes.committed

    try:
        first, committed = asyncio.run(flow())
    finally:
        group.close()
    assert first == 1 and log.on_thread == 1    # only the batch before it was up
    assert store.loop_connected()["batches"] == 1    # /metrics
    assert committed >= 2
    assert sorted(c.call_id for c in log.list()) == sorted(
        ["first", *(c.call_id for c in ended)])
    assert log.calls_up() == []                   # each final record closed its entry


def test_cdr_batches_the_loop_cannot_commit_go_to_the_thread_and_none_is_lost(
        store: PostgresStore, clock: FakeClock, pg_dsn: str) -> None:
    log = Counted(store)
    group = CdrGroupCommit(log)
    now = clock.wall()
    later = now + 400 * 86_400            # a day whose CDR partition is not made yet
    up, ended = calls(now, 10, "c")

    async def flow() -> list[int]:
        async def until_up() -> None:
            """A journal entry at a time (the thread's, until one finds the loop's
            connection up: a batch asks for it)."""
            while not (store._on_loop_writes and store._on_loop_writes.up):
                await group.call_up(replace(CALL, call_id="warm", invite_at=now))
                await asyncio.sleep(0.05)
        await group.write(replace(CALL, call_id="day", invite_at=now, end_at=now))
        await until_up()
        writes = store._on_loop_writes
        assert writes is not None
        writes.retry_s = 0.2
        on_thread = [log.on_thread]
        # Its connection ends between two batches: the next batch finds it broken.
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            pid = writes._conn.pgconn.backend_pid if writes._conn else 0
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            await asyncio.sleep(0.2)
            await asyncio.gather(*(group.call_up(c) for c in up))
            on_thread.append(log.on_thread)
            await asyncio.sleep(0.25)             # past retry_s
            await until_up()
            on_thread.append(log.on_thread)
            # A day with no partition: made on the thread, whatever the loop could do.
            await group.write(replace(CALL, call_id="later", invite_at=later, end_at=later))
            on_thread.append(log.on_thread)
            # Another node's retention dropped a day we made (our cache says it is
            # there): the loop's statement fails, the thread's try makes it again.
            day = day_of_key(int(now * 1_000_000).to_bytes(8, "big"))
            admin.execute(f"DROP TABLE sipmask.{partition_name(day)}")
            await asyncio.gather(*(group.write(c) for c in ended))
            on_thread.append(log.on_thread)
        return on_thread

    try:
        on_thread = asyncio.run(flow())
    finally:
        group.close()
    assert on_thread[1] == on_thread[0] + 1      # the lost connection's batch
    assert on_thread[3] == on_thread[2] + 1      # the new day's
    assert on_thread[4] == on_thread[3] + 1      # the dropped day's
    # ("day" went with its partition, as retention's records do.)
    assert sorted(c.call_id for c in log.list()) == sorted(
        ["later", *(c.call_id for c in ended)])
    assert [c.call_id for c in log.calls_up()] == ["warm"]


def test_an_outage_is_logged_once_not_at_every_try_to_connect() -> None:
    from structlog.testing import capture_logs
    tries: list[float] = []

    def refused() -> psycopg.Connection[Any]:
        tries.append(time.monotonic())
        raise psycopg.OperationalError("connection refused")

    async def flow() -> None:
        reads = LoopReads(asyncio.get_running_loop(), refused, b"SELECT $1::bytea",
                          patience_s=1, max_pending=4, retry_s=0.01)
        try:
            deadline = time.monotonic() + 10
            while len(tries) < 5 and time.monotonic() < deadline:
                assert not reads.read([b"x"], lambda _: None)
                await asyncio.sleep(0.02)
        finally:
            reads.close()

    with capture_logs() as logs:
        asyncio.run(flow())
    assert len(tries) >= 5
    assert [e["event"] for e in logs] == ["store.loop_reads_down"]


def test_loop_writes_roll_back_a_failed_transaction_and_give_up_a_silent_server(
        pg_dsn: str) -> None:
    from sipmask.store.pg_loop import LoopWrites

    async def connect() -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True)

    async def flow() -> tuple[bool, list[int], bool, bool]:
        writes = LoopWrites(asyncio.get_running_loop(), connect, retry_s=5)
        try:
            assert not writes.ready()                    # connecting
            await until(lambda: writes.ready())
            await writes.run("BEGIN", [("CREATE TEMP TABLE t (k int PRIMARY KEY)", None)])
            # The second row breaks the key: the whole transaction goes, the connection
            # stays (rolled back, ready for the next).
            with pytest.raises(psycopg.errors.UniqueViolation):
                await writes.run("BEGIN", [("INSERT INTO t VALUES (1)", None),
                                           ("INSERT INTO t VALUES (1)", None)])
            kept = writes.ready()
            await writes.run("BEGIN", [("INSERT INTO t VALUES (%s)", (2,))])
            assert writes._conn is not None
            rows = [r[0] for r in await (await writes._conn.execute(
                "SELECT k FROM t ORDER BY k")).fetchall()]
            # A server that does not answer: given up by the caller's deadline; then the
            # connection is gone and not made again within retry_s.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(writes.run("BEGIN", [("SELECT pg_sleep(5)", None)]),
                                       0.3)
            return kept, rows, writes.up, writes.ready()
        finally:
            writes.close()

    kept, rows, up, ready = asyncio.run(flow())
    assert kept and rows == [2]
    assert not up and not ready
