"""Store work the event loop must not wait for: bounded pools of threads.

A lookup on PostgreSQL is a network round trip. The engine's shell asks it through `ask`:
the store's `route_on_loop` first (the loop's own connection, store/pg_loop.py); what that
cannot answer, and any store with only `route_soon`, runs on `Offload`'s threads; either way
the loop keeps serving other calls meanwhile:

    answer = ask(store, x, caller, now)          # raises StoreBusy: answer 503
    binding = await answer                       # StoreError: the database failed (503)

The HTTP API's reads (a binding, a list, CDRs, a trace, the health check) go the same way
through `soon(store, fn)`, on threads of their own (`reads`), so a flood of them never
takes the threads calls wait for.

The queue is bounded: when `max_pending` lookups wait already (the database is slow or
gone), a new one is refused at once with StoreBusy rather than queued behind them, so
overload turns into 503s, not into memory and INVITEs that time out anyway.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from sipmask.errors import StoreError
from sipmask.store.base import Binding

T = TypeVar("T")


class StoreBusy(StoreError):
    """The call path's queue of store work is full: refuse the call with 503."""


class Offload:
    """`workers` threads running blocking store calls; at most `max_pending` in the queue
    or running at once."""

    def __init__(self, workers: int, max_pending: int, name: str = "store-call") -> None:
        if workers < 1 or max_pending < workers:
            raise ValueError("need workers >= 1 and max_pending >= workers")
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._slots = threading.BoundedSemaphore(max_pending)
        self.refused = 0                 # StoreBusy raised (for metrics)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            raise StoreBusy(f"{self.max_pending} store calls already waiting")
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self) -> None:
        """Let the calls in flight finish, then stop the threads."""
        self._pool.shutdown(wait=True)


class _Routes(Protocol):
    def route(self, x: str, caller: str, now: float,
              ext: str | None = None) -> Binding | None: ...


def in_place(store: object) -> bool:
    """Whether `store` answers a lookup where it is asked (LMDB, memory: a memory read of a
    few µs, cheaper than a thread hop), not on threads of its own (`route_soon`,
    PostgreSQL)."""
    return getattr(store, "route_soon", None) is None


def route_here(store: _Routes, x: str, caller: str, now: float,
               ext: str | None = None) -> Binding | None:
    """The lookup of a store `in_place`, run here. `ext`: an AXE extension the caller gave
    (store.base.BindingStore.route), passed only when there is one."""
    return store.route(x, caller, now, ext) if ext is not None else store.route(x, caller, now)


def lookup(store: _Routes, x: str, caller: str, now: float,
           ext: str | None = None) -> Future[Binding | None]:
    """The call path's lookup as a future, whatever the backend: on a store that offers
    `route_soon` (PostgreSQL) it runs on that store's threads; otherwise (`in_place`) it
    runs here and the future is done."""
    if in_place(store):
        return _here(lambda: route_here(store, x, caller, now, ext))
    route_soon: Callable[..., Future[Binding | None]] = store.route_soon  # type: ignore[attr-defined]
    return route_soon(x, caller, now, ext) if ext is not None else route_soon(x, caller, now)


def ask(store: _Routes, x: str, caller: str, now: float,
        ext: str | None = None) -> asyncio.Future[Binding | None]:
    """The call path's lookup from the running event loop, answered on it: the store's own
    `route_on_loop` where it has one (PostgreSQL: the loop's connection, its threads for
    the rest), else `lookup`'s future. StoreBusy (a full queue) is raised here, at once."""
    on_loop: Callable[..., asyncio.Future[Binding | None]] | None = getattr(
        store, "route_on_loop", None)
    if on_loop is not None:
        return on_loop(x, caller, now, ext)
    return asyncio.wrap_future(lookup(store, x, caller, now, ext))


def soon(store: object, fn: Callable[[], T]) -> Future[T]:
    """Any other store read as a future (the HTTP API's): on a store whose reads wait on
    the network it runs on that store's read threads (`reads`, an Offload; StoreBusy at
    once when they are full); otherwise (LMDB) here, and the future is done."""
    reads: Offload | None = getattr(store, "reads", None)
    if reads is not None:
        return reads.submit(fn)
    return _here(fn)


def _here(fn: Callable[[], T]) -> Future[T]:
    done: Future[T] = Future()
    try:
        done.set_result(fn())
    except Exception as exc:
        done.set_exception(exc)
    return done
