"""Group commit for CDRs: the records queued while one commit runs go to disk together in the
next, in one transaction, on one writer thread (in place for a sink that does not block; on
the loop for one that can, below), so
the event loop never waits for an fsync and the fsync is paid once per batch, not per record.

The promise stays the same (CONTRACT "Call detail records": written before the call's last
response leaves; README: an answered call is journalled before its 200 leaves): the caller
waits for the future of `write` / `call_up` and sends its response only once it is done. Under load
each batch holds the records of every call that reached that point while the previous commit
ran, so the cost per call falls as the rate rises (bench/calls.py).

LMDB serialises writers itself (the heartbeat, the CLI and the API write from elsewhere),
and py-lmdb releases the GIL while it commits. A failed batch is retried record by record,
so one bad record cannot fail the others; the one that still fails raises in its caller.

A sink that can commit on the loop itself (`write_batch_on_loop`: PostgreSQL, whose commit
is a network round trip, store/pg_loop.py) does so, and the writer thread then takes only
the batches it could not (its connection down or lost, a CDR day to make, a failed
statement): a thread waiting on a socket must win the GIL back from a busy loop to read
the answer, which cost a journal entry 10-80 ms at 400 calls/s (README "PostgreSQL on the
event loop").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from concurrent.futures import ThreadPoolExecutor

from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrSink
from sipmask.errors import StoreError

Op = tuple[bool, Cdr]     # (final, record): final records as CdrSink.write, else call_up


class CdrGroupCommit:
    def __init__(self, sink: CdrSink) -> None:
        self.sink = sink
        self._ops: list[tuple[bool, Cdr, asyncio.Future[None]]] = []
        self._busy = False
        self._executor: ThreadPoolExecutor | None = None
        self.commits = 0          # transactions written (for tests and the bench)

    # Futures, not coroutines: the engine takes the result in the future's callback, with
    # no task around it (a task and its coroutine cost as much again, twice a call).
    def write(self, cdr: Cdr) -> asyncio.Future[None]:
        """The final record of a call attempt; the future is done once it is committed."""
        return self._queue(True, cdr)

    def call_up(self, cdr: Cdr) -> asyncio.Future[None]:
        """Journal an answered call; the future is done once it is committed."""
        return self._queue(False, cdr)

    def _queue(self, final: bool, cdr: Cdr) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._ops.append((final, cdr, done))
        if not self._busy:
            self._busy = True
            # After the callbacks of this pass (the datagrams read with it) have queued theirs.
            loop.call_soon(self._start, loop)
        return done

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        ops, self._ops = self._ops, []
        if not ops:
            self._busy = False
            return
        self.commits += 1
        batch = [(final, cdr) for final, cdr, _ in ops]
        if not self.sink.blocking:
            # A sink that does not wait (the in-memory one of unit tests) commits in place.
            running: asyncio.Future[list[Exception | None]] = loop.create_future()
            running.set_result(self._commit(batch))
            self._finished(loop, ops, running)
            return
        on_loop = getattr(self.sink, "write_batch_on_loop", None)
        writing = None
        if on_loop is not None:
            # A record that cannot be sealed raises here: the thread's way finds which.
            with contextlib.suppress(Exception):
                writing = on_loop(batch)
        if writing is not None:
            running = loop.create_task(self._commit_on_loop(loop, writing, batch))
        else:
            running = loop.run_in_executor(self._writer(), self._commit, batch)
        running.add_done_callback(lambda f: self._finished(loop, ops, f))

    def _writer(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cdr-commit")
        return self._executor

    async def _commit_on_loop(self, loop: asyncio.AbstractEventLoop,
                              writing: Awaitable[None], batch: list[Op]
                              ) -> list[Exception | None]:
        """The batch committed on the loop (PostgreSQL); if that fails for any reason, the
        writer thread's way, which retries through a failover and record by record."""
        try:
            await writing
        except Exception:
            return await loop.run_in_executor(self._writer(), self._commit, batch)
        return [None] * len(batch)

    def _commit(self, ops: Sequence[Op]) -> list[Exception | None]:
        """On the writer thread: one transaction, or one per record when that fails."""
        try:
            self.sink.write_batch(ops)
            return [None] * len(ops)
        except Exception:
            pass
        errors: list[Exception | None] = []
        for op in ops:
            try:
                self.sink.write_batch((op,))
                errors.append(None)
            except Exception as exc:
                errors.append(exc)
        return errors

    def _finished(self, loop: asyncio.AbstractEventLoop,
                  ops: list[tuple[bool, Cdr, asyncio.Future[None]]],
                  result: asyncio.Future[list[Exception | None]]) -> None:
        exc = (StoreError("the CDR commit was cancelled (shutting down)")
               if result.cancelled() else result.exception())
        errors = result.result() if exc is None else [exc] * len(ops)
        for (_, _, done), error in zip(ops, errors, strict=True):
            if done.done():
                continue
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        self._busy = False
        if self._ops:
            self._busy = True
            self._start(loop)

    def close(self) -> None:
        """Wait for the commit in flight and stop the writer thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
