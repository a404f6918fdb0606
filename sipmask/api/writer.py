"""Store writes for the API: one writer thread, concurrent creates committed together.

Why not call the store in the handler, as reads do: every LMDB write commits with an fsync
(store/lmdb.py: a binding acknowledged is on disk), measured at 2–5 ms on these machines,
so one create per commit tops out near 200 binds/s and would stall the event loop (SIP
included) for the whole fsync. Instead writes run on a single thread, off the loop, and
creates that arrive while a commit is on disk are committed together in the next one
through `create_many` (group commit: one fsync for the batch). One thread keeps writes in
arrival order; LMDB serialises writers across processes anyway.

The thread feeds itself: when a commit ends it takes what queued meanwhile at once, and
hands the finished batch's answers to the loop in one callback. An earlier version went
back through the event loop between commits (answers set, then the next batch submitted),
and under load that round trip left the disk idle for as long as a commit took.

`create_many` reports a refused line as (field, reason) without its error type, and the
type picks the status (409 conflict or exhausted pool, 422 other rules). A refused request
is therefore run again alone through `create`, whose typed error is the answer. That costs
one more write transaction for refusals only; it may also succeed, when an earlier write in
the batch that blocked it was undone meanwhile, and then the binding is the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sipmask.errors import RefusedError
from sipmask.store.base import Binding, BindingRequest, BindingStore

T = TypeVar("T")

ACTOR = "api"
MAX_BATCH = 256        # creates per commit; bounds how long one commit holds the write lock

_Outcome = Binding | BaseException


@dataclass(slots=True)
class _Create:
    request: BindingRequest
    future: asyncio.Future[Binding]


@dataclass(slots=True)
class _Call:
    fn: Callable[[], Any]
    future: asyncio.Future[Any]


_STOP = object()       # queued by close(): the thread ends once everything before it is done


class BindingWriter:
    """Runs the API's store writes on one thread; `create` batches under load."""

    def __init__(self, store: BindingStore, *, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Create | _Call | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None     # started by the first write
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0          # create batches committed (for the bench and tests)
        self.created = 0

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._loop = loop
            self._thread = threading.Thread(target=self._work, name="sipmask-api-writer",
                                            daemon=True)
            self._thread.start()
        return loop

    async def create(self, request: BindingRequest) -> Binding:
        future: asyncio.Future[Binding] = self._start().create_future()
        self._jobs.put(_Create(request, future))
        return await future

    async def run(self, fn: Callable[[], T]) -> T:
        """A single write (delete, ttl change) on the writer thread, in arrival order."""
        future: asyncio.Future[T] = self._start().create_future()
        self._jobs.put(_Call(fn, future))
        return await future

    # -- on the writer thread ---------------------------------------------------------------
    def _work(self) -> None:
        jobs = self._jobs
        job = jobs.get()
        while job is not _STOP:
            if isinstance(job, _Call):
                try:
                    outcome: Any = job.fn()
                except BaseException as exc:   # handed to the awaiting handler
                    outcome = exc
                self._answer([job.future], [outcome])
                job = jobs.get()
                continue
            assert isinstance(job, _Create)
            batch, job = self._gather(job)
            futures = [c.future for c in batch]
            try:
                outcomes: list[_Outcome] = [*self._commit([c.request for c in batch])]
            except Exception as exc:   # the store failed as a whole: tell every waiter
                outcomes = [exc] * len(batch)
            self._answer(futures, outcomes)
            if job is None:
                job = jobs.get()

    def _gather(self, first: _Create) -> tuple[list[_Create], object | None]:
        """`first` and the creates queued behind it (up to max_batch), and the next job
        that is not one of them (None when the queue ran dry)."""
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return batch, None
            if not isinstance(job, _Create):
                return batch, job
            batch.append(job)
        return batch, None

    def _answer(self, futures: list[asyncio.Future[Any]], outcomes: list[Any]) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):   # the loop is closed: nobody waits now
            self._loop.call_soon_threadsafe(_settle, futures, outcomes)

    def _commit(self, requests: list[BindingRequest]) -> list[Binding | RefusedError]:
        """One transaction for the batch, refusals re-run alone."""
        self.commits += 1
        if len(requests) == 1:
            outcomes: list[Binding | RefusedError] = [self._create_one(requests[0])]
        else:
            outcomes = []
            done = self.store.create_many(enumerate(requests), actor=ACTOR)
            for request, result in zip(requests, done, strict=True):
                if result.binding is not None:
                    outcomes.append(result.binding)
                else:
                    outcomes.append(self._create_one(request))
        self.created += sum(1 for o in outcomes if isinstance(o, Binding))
        return outcomes

    def _create_one(self, r: BindingRequest) -> Binding | RefusedError:
        try:
            return self.store.create(mode=r.mode, tenant=r.tenant, a=r.a, b=r.b, x=r.x,
                                     ttl=r.ttl, actor=ACTOR, direction=r.direction,
                                     max_duration_s=r.max_duration_s,
                                     max_concurrent=r.max_concurrent, blacklist=r.blacklist,
                                     ext=r.ext, y=r.y, record=r.record)
        except RefusedError as exc:
            return exc

    async def close(self) -> None:
        """Finish what was accepted, then stop the thread (before the store is closed)."""
        thread = self._thread
        if thread is None:
            return
        self._jobs.put(_STOP)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._thread = None
        await asyncio.sleep(0)      # let the last batch's answers reach their handlers


def _settle(futures: list[asyncio.Future[Any]], outcomes: list[Any]) -> None:
    """On the loop: each waiter gets its binding or its error."""
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():          # the client went away; the write still stands
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
