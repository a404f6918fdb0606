"""Store writes for the API: one writer thread, concurrent creates committed together.

Why not call the store in the handler, as reads do: every LMDB write commits with an fsync
(store/lmdb.py: a binding acknowledged is on disk), measured at 2–5 ms on these machines,
so one create per commit tops out near 200 binds/s and would stall the event loop (SIP
included) for the whole fsync. Instead writes run on a single thread, off the loop, and
creates that arrive while a commit is on disk are committed together in the next one
through `create_many` (group commit: one fsync for the batch). One thread keeps writes in
arrival order; LMDB serialises writers across processes anyway.

`create_many` reports a refused line as (field, reason) without its error type, and the
type picks the status (409 conflict or exhausted pool, 422 other rules). A refused request
is therefore run again alone through `create`, whose typed error is the answer. That costs
one more write transaction for refusals only; it may also succeed, when an earlier write in
the batch that blocked it was undone meanwhile, and then the binding is the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sipmask.errors import RefusedError
from sipmask.store.base import Binding, BindingRequest, BindingStore

T = TypeVar("T")

ACTOR = "api"
MAX_BATCH = 256        # creates per commit; bounds how long one commit holds the write lock

_Outcome = Binding | RefusedError


class BindingWriter:
    """Runs the API's store writes on one thread; `create` batches under load."""

    def __init__(self, store: BindingStore, *, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipmask-api")
        self._pending: list[tuple[BindingRequest, asyncio.Future[Binding]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self.commits = 0          # create batches committed (for the bench and tests)
        self.created = 0

    async def create(self, request: BindingRequest) -> Binding:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Binding] = loop.create_future()
        self._pending.append((request, future))
        if self._drainer is None:
            self._drainer = loop.create_task(self._drain())
        return await future

    async def run(self, fn: Callable[[], T]) -> T:
        """A single write (delete, ttl change) on the writer thread, in arrival order."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                requests = [request for request, _ in batch]
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._commit,
                                                          requests)
                except Exception as exc:   # the store failed as a whole: tell every waiter
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():     # the client went away; the write still stands
                        continue
                    if isinstance(outcome, RefusedError):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            self._drainer = None

    def _commit(self, requests: list[BindingRequest]) -> list[_Outcome]:
        """On the writer thread: one transaction for the batch, refusals re-run alone."""
        self.commits += 1
        if len(requests) == 1:
            outcomes: list[_Outcome] = [self._create_one(requests[0])]
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

    def _create_one(self, r: BindingRequest) -> _Outcome:
        try:
            return self.store.create(mode=r.mode, tenant=r.tenant, a=r.a, b=r.b, x=r.x,
                                     ttl=r.ttl, actor=ACTOR, direction=r.direction,
                                     max_duration_s=r.max_duration_s,
                                     max_concurrent=r.max_concurrent, blacklist=r.blacklist)
        except RefusedError as exc:
            return exc

    async def close(self) -> None:
        """Finish what was accepted, then stop the thread (before the store is closed)."""
        while self._drainer is not None:
            await asyncio.shield(self._drainer)
        self._executor.shutdown(wait=True)
