"""The call path's PostgreSQL reads, driven by the event loop: one connection in libpq's
pipeline mode, no thread between the loop and the socket.

Why not the lookup threads (store/offload.py) for every lookup: a thread that waits on a
socket gives up the GIL and must win it back to read the answer, and while the loop is busy
with calls that takes up to the interpreter's switch interval (5 ms), two or three times a
lookup. Under load the lookups queued behind one another that way: at 400 calls/s a lookup
took 5.6 ms (p50) on a thread against well under 1 ms of work, setup times reached 60-150 ms
and the pool of 1,024 waiting lookups filled (503s) at 600 calls/s. Here the loop sends
each read without waiting (PQsendQueryPrepared, then a Sync, so a failed read fails alone)
and takes the answers, in order, when epoll says the socket is readable: README
"PostgreSQL on the event loop" has the figures.

What stays on the threads (the caller's choice, PostgresStore.route_on_loop): anything
while this connection is not up, and every read it could not answer (broken, an error, no
answer within the lookup's patience). The threads ride out a failover as they always did
(PostgresStore._run); this connection is made again, on a thread, at most once a
`retry_s`, on the first read after that.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import pq

from sipmask.errors import StoreError
from sipmask.observability.logging import get_logger
from sipmask.store.offload import StoreBusy

log = get_logger("sipmask.store")

Answer = Callable[[bytes | StoreError | None], None]   # the value, None (no row), or why not
_NAME = b"sipmask_loop_read"
_TUPLES_OK = pq.ExecStatus.TUPLES_OK
_SYNC = pq.ExecStatus.PIPELINE_SYNC
_BAD = pq.ConnStatus.BAD
_IDLE = pq.TransactionStatus.IDLE


class LoopReads:
    """Reads of one prepared statement (`sql`, $1.. parameters, the first column of its
    first row answered) on a connection that `connect` makes (blocking: it runs on a thread
    of its own). Every method runs on `loop`'s thread, except `close`, which may run on
    any. Each `read`'s answer is called on the loop, once, never from inside `read`."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 connect: Callable[[], psycopg.Connection[Any]], sql: bytes, *,
                 patience_s: float, max_pending: int, retry_s: float = 1.0) -> None:
        self.loop = loop
        self._connect = connect
        self._sql = sql
        self.patience_s = patience_s
        self.max_pending = max_pending
        self.retry_s = retry_s
        self._conn: psycopg.Connection[Any] | None = None
        self._pg: Any = None
        self._fd = -1
        self._writing = False
        self._connecting = False
        self._closed = False
        self._next_try = 0.0                  # monotonic: no connect before this
        # (answer, sent at): in the order sent, which is the order answered.
        self._waiting: collections.deque[tuple[Answer, float]] = collections.deque()
        self._result: Any = None              # the current read's rows, until its end
        self._watch: asyncio.TimerHandle | None = None
        self._told = False                    # this outage is in the log already
        self._lock = threading.Lock()         # close() from another thread vs _attach
        self.sent = 0                         # reads sent on this connection (tests)

    @property
    def up(self) -> bool:
        return self._pg is not None

    def read(self, params: Sequence[bytes], answer: Answer) -> bool:
        """Send one read; False when the connection is not up (then nothing is sent and
        `answer` is never called: the caller reads elsewhere). StoreBusy when
        `max_pending` reads wait already."""
        pg = self._pg
        if pg is None:
            self._maybe_connect()
            return False
        if len(self._waiting) >= self.max_pending:
            raise StoreBusy(f"{self.max_pending} store reads already waiting")
        try:
            pg.send_query_prepared(_NAME, params, [1] * len(params), 1)
            pg.pipeline_sync()
            more = pg.flush()
        except psycopg.Error as exc:
            self._waiting.append((answer, time.monotonic()))
            self._lost(f"sending failed: {first_line(exc)}")
            return True
        self._waiting.append((answer, time.monotonic()))
        self.sent += 1
        if more and not self._writing:
            self._writing = True
            self.loop.add_writer(self._fd, self._flush)
        if self._watch is None:
            self._watch = self.loop.call_later(self.patience_s / 2, self._check)
        return True

    # -- the socket -------------------------------------------------------------------------
    def _flush(self) -> None:
        try:
            more = self._pg.flush()
        except psycopg.Error as exc:
            self._lost(f"sending failed: {first_line(exc)}")
            return
        if not more:
            self._writing = False
            self.loop.remove_writer(self._fd)

    def _readable(self) -> None:
        pg = self._pg
        try:
            pg.consume_input()
        except psycopg.Error as exc:
            self._lost(first_line(exc))
            return
        if pg.status == _BAD:
            self._lost("the server closed the connection")
            return
        waiting = self._waiting
        while waiting and not pg.is_busy():
            res = pg.get_result()
            if res is None:                      # the end of one read's results
                if self._result is None:
                    break                        # nothing more has arrived
                res, self._result = self._result, None
                answer, _sent = waiting.popleft()
                if res.status == _TUPLES_OK:
                    _give(answer, res.get_value(0, 0) if res.ntuples else None)
                else:
                    _give(answer, StoreError(
                        "PostgreSQL refused the read: "
                        + (res.error_message or b"").decode(errors="replace").strip()))
            elif res.status != _SYNC:
                self._result = res

    def _check(self) -> None:
        """A read unanswered for the whole patience: the server is gone without a word
        (no RST); give up this connection, and its reads go elsewhere."""
        self._watch = None
        if not self._waiting:
            return
        if time.monotonic() - self._waiting[0][1] >= self.patience_s:
            self._lost(f"no answer within {self.patience_s:g} s")
            return
        self._watch = self.loop.call_later(self.patience_s / 2, self._check)

    # -- losing and making the connection ---------------------------------------------------
    def _lost(self, why: str) -> None:
        log.warning("store.loop_reads_lost", error=why, waiting=len(self._waiting))
        self._told = True
        self._detach()
        self._next_try = time.monotonic() + self.retry_s
        failed = StoreError(f"the loop's PostgreSQL connection was lost: {why}")
        waiting, self._waiting = self._waiting, collections.deque()
        for answer, _sent in waiting:       # later: this may run inside `read`
            self.loop.call_soon(_give, answer, failed)

    def _detach(self) -> None:
        """Off the loop's watch and closed (on the loop's thread)."""
        with self._lock:
            conn, self._conn, self._pg = self._conn, None, None
        self._result = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if conn is None:
            return
        with contextlib.suppress(ValueError, OSError, RuntimeError):
            self.loop.remove_reader(self._fd)
            if self._writing:
                self.loop.remove_writer(self._fd)
        self._writing = False
        conn.close()

    def _maybe_connect(self) -> None:
        if self._connecting or self._closed or time.monotonic() < self._next_try:
            return
        self._connecting = True
        threading.Thread(target=self._connect_here, name="store-loop-connect",
                         daemon=True).start()

    def _connect_here(self) -> None:
        """On a thread of its own: connect and prepare (both block), then hand over."""
        try:
            conn = self._connect()
        except Exception as exc:                        # retried later
            self._call(self._failed, first_line(exc))
            return
        try:
            res = conn.pgconn.prepare(_NAME, self._sql)
            if res.status != pq.ExecStatus.COMMAND_OK:
                raise StoreError((res.error_message or b"").decode(errors="replace").strip())
        except Exception as exc:                        # retried later
            conn.close()
            self._call(self._failed, first_line(exc))
            return
        if not self._call(self._attach, conn):
            conn.close()                                # the loop is gone

    def _call(self, fn: Callable[..., None], *args: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:                            # the loop is closed
            return False
        return True

    def _failed(self, why: str) -> None:
        self._connecting = False
        self._next_try = time.monotonic() + self.retry_s
        if not self._told:               # once an outage: a try a second would flood the log
            self._told = True
            log.info("store.loop_reads_down", error=why)

    def _attach(self, conn: psycopg.Connection[Any]) -> None:
        self._connecting = False
        with self._lock:
            if self._closed:
                conn.close()
                return
            pg = conn.pgconn
            pg.nonblocking = 1
            pg.enter_pipeline_mode()
            self._conn, self._pg, self._fd = conn, pg, pg.socket
        self._told = False
        self.loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        """Stop and close the connection (from any thread). Reads still waiting are never
        answered: the store is closing, and its callers with it."""
        with self._lock:
            self._closed = True
        try:
            here = asyncio.get_running_loop() is self.loop
        except RuntimeError:
            here = False
        if here or self.loop.is_closed() or not self._call(self._detach):
            self._detach()


def _give(answer: Answer, value: bytes | StoreError | None) -> None:
    """One answer; a caller's callback that fails is logged and costs the others nothing."""
    try:
        answer(value)
    except Exception:
        log.exception("store.loop_read_answer_failed")


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (libpq's run to several), for a log line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class LoopWrites:
    """Transactions of write statements (no answers read) sent on `loop` over one psycopg
    AsyncConnection in pipeline mode: BEGIN, the statements, COMMIT in one round trip, with
    no thread between (cdr/group.py's CDR and journal batches on PostgreSQL). `connect` makes
    the connection (awaited in a task of its own); until it is up, and for `retry_s` after
    it is lost, `ready` says no and the caller writes on its thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 connect: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]], *,
                 retry_s: float = 1.0) -> None:
        self.loop = loop
        self._connect = connect
        self.retry_s = retry_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._next_try = 0.0
        self._closed = False
        self._running = False
        self._told = False                     # this outage is in the log already
        self.committed = 0                     # transactions committed here (tests)

    @property
    def up(self) -> bool:
        return self._conn is not None

    def ready(self) -> bool:
        """Whether `run` may be called now (on the loop's thread); when not, a connection is
        being made unless the last one was lost within `retry_s`."""
        if self._conn is not None:
            return not self._running
        if (self._connecting is None and not self._closed
                and time.monotonic() >= self._next_try):
            self._connecting = self.loop.create_task(self._make())
        return False

    async def _make(self) -> None:
        try:
            conn = await self._connect()
        except Exception as exc:                        # retried later
            self._next_try = time.monotonic() + self.retry_s
            if not self._told:           # once an outage: a try a second would flood the log
                self._told = True
                log.info("store.loop_writes_down", error=first_line(exc))
        else:
            if self._closed:
                conn.pgconn.finish()
            else:
                self._conn, self._told = conn, False
        finally:
            self._connecting = None

    async def run(self, begin: str, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """One transaction (as PostgresStore._once runs one on a thread); psycopg.Error
        when it failed: rolled back, or the connection lost (then `ready` says no for
        `retry_s`; a COMMIT it broke may or may not have been applied). One at a time."""
        conn = self._conn
        assert conn is not None and not self._running, "run() while not ready()"
        self._running = True                   # one at a time
        try:
            async with conn.pipeline() as pipe:
                cur = conn.cursor()
                try:
                    await cur.execute(begin)
                    for sql, params in statements:
                        await cur.execute(sql, params)
                except BaseException:
                    if not conn.broken:        # a failed statement stops it until a Sync
                        with contextlib.suppress(psycopg.Error):
                            await pipe.sync()
                        with contextlib.suppress(psycopg.Error):
                            await cur.execute("ROLLBACK")
                    raise
                await cur.execute("COMMIT")    # answered with the Sync that ends the pipeline
        except BaseException as exc:
            if conn.broken or not isinstance(exc, psycopg.Error):
                self._conn = None
                conn.pgconn.finish()
                self._next_try = time.monotonic() + self.retry_s
                log.warning("store.loop_writes_lost", error=first_line(exc))
                self._told = True
            elif conn.pgconn.transaction_status != _IDLE:     # failed at its COMMIT
                with contextlib.suppress(psycopg.Error):
                    await conn.execute("ROLLBACK")
            raise
        else:
            self.committed += 1
        finally:
            self._running = False
            if self._closed:                   # closed while it ran
                conn.pgconn.finish()

    def close(self) -> None:
        """Close the connection (a transaction in flight finishes first, then closes)."""
        self._closed = True
        if self._connecting is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._connecting.cancel()
        conn, self._conn = self._conn, None
        if conn is not None and not self._running:   # else when its transaction ends
            conn.pgconn.finish()
