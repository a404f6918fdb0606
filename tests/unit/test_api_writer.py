"""api/writer.py: creates queued together share a commit, writes keep arrival order, and
every waiter hears the outcome of its own request."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from sipmask.api.writer import BindingWriter
from sipmask.config import loader
from sipmask.errors import ConflictError, RecordNotFound, StoreError
from sipmask.store.base import Binding, BindingRequest, ImportOutcome
from sipmask.store.memory import MemoryStore

B = "13900000002"
X = "700100000000001"


def a_number(i: int) -> str:
    return f"138{i:08d}"


class GatedStore(MemoryStore):
    """A MemoryStore whose first write waits for `gate`, so the test can queue work behind
    a commit in progress, as requests do behind an fsync."""

    def __init__(self) -> None:
        super().__init__(tenants=loader.loads(loader.default_text()).tenants)
        self.gate = threading.Event()
        self.batches: list[int] = []

    def create(self, *args: Any, **kwargs: Any) -> Binding:
        self.gate.wait(5)
        self.batches.append(1)
        return super().create(*args, **kwargs)

    def create_many(self, requests: Iterable[tuple[int, BindingRequest]], *,
                    actor: str = "import", batch: int = 5000,
                    default_tenant: str | None = None) -> Iterator[ImportOutcome]:
        self.gate.wait(5)
        requests = list(requests)
        self.batches.append(len(requests))
        return iter(list(super().create_many(requests, actor=actor)))


def request(i: int, x: str | None = None) -> BindingRequest:
    return BindingRequest("axb", a_number(i), B, x=x, tenant="demo")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.005)


def test_creates_queued_behind_a_commit_share_the_next() -> None:
    store = GatedStore()
    writer = BindingWriter(store)

    async def main() -> list[Binding | BaseException]:
        first = asyncio.ensure_future(writer.create(request(0)))
        await settle()                      # the first commit is now waiting on the gate
        rest = [asyncio.ensure_future(writer.create(request(i))) for i in range(1, 41)]
        await asyncio.sleep(0)
        store.gate.set()
        done = await asyncio.gather(first, *rest, return_exceptions=True)
        await writer.close()
        return done

    done = asyncio.run(main())
    assert all(isinstance(b, Binding) for b in done)
    assert [b.a for b in done if isinstance(b, Binding)] == [a_number(i) for i in range(41)]
    assert store.batches == [1, 40]
    assert (writer.commits, writer.created) == (2, 41)


def test_a_refused_create_in_a_batch_gets_its_own_typed_error() -> None:
    store = GatedStore()
    writer = BindingWriter(store)

    async def main() -> list[Binding | BaseException]:
        first = asyncio.ensure_future(writer.create(request(0, x=X)))
        await settle()
        taken = asyncio.ensure_future(writer.create(request(1, x=X)))   # X is bound by then
        free = asyncio.ensure_future(writer.create(request(2)))
        await asyncio.sleep(0)
        store.gate.set()
        done = await asyncio.gather(first, taken, free, return_exceptions=True)
        await writer.close()
        return list(done)

    first, taken, free = asyncio.run(main())
    assert isinstance(first, Binding) and first.x == X
    assert isinstance(taken, ConflictError) and taken.http_status == 409
    assert isinstance(free, Binding) and free.x != X


def test_single_writes_and_creates_run_in_arrival_order() -> None:
    store = GatedStore()
    store.gate.set()
    writer = BindingWriter(store)

    async def main() -> tuple[Any, ...]:
        made = await writer.create(request(0, x=X))
        # Delete, then bind the same X again: only arrival order makes the second succeed.
        gone = asyncio.ensure_future(writer.run(lambda: store.delete(made.id, tenant="demo")))
        again = asyncio.ensure_future(writer.create(request(1, x=X)))
        missing = asyncio.ensure_future(writer.run(lambda: store.delete(made.id)))
        done = await asyncio.gather(gone, again, missing, return_exceptions=True)
        await writer.close()
        return tuple(done)

    gone, again, missing = asyncio.run(main())
    assert gone is None
    assert isinstance(again, Binding) and again.x == X
    assert isinstance(missing, RecordNotFound)


def test_a_failing_store_fails_every_waiter_and_the_writer_goes_on() -> None:
    class Broken(GatedStore):
        broken = True

        def create_many(self, requests: Iterable[tuple[int, BindingRequest]], *,
                        actor: str = "import", batch: int = 5000,
                        default_tenant: str | None = None) -> Iterator[ImportOutcome]:
            self.gate.wait(5)
            if self.broken:
                raise StoreError("disk full")
            return super().create_many(requests, actor=actor)

    store = Broken()
    writer = BindingWriter(store)

    async def main() -> tuple[list[Any], Binding]:
        first = asyncio.ensure_future(writer.create(request(0)))
        await settle()
        rest = [asyncio.ensure_future(writer.create(request(i))) for i in range(1, 4)]
        await asyncio.sleep(0)
        store.gate.set()
        done = await asyncio.gather(first, *rest, return_exceptions=True)
        store.broken = False
        after = await writer.create(request(9))
        await writer.close()
        return done, after

    done, after = asyncio.run(main())
    assert isinstance(done[0], Binding)
    assert all(isinstance(e, StoreError) and str(e) == "disk full" for e in done[1:])
    assert after.a == a_number(9)


def test_close_finishes_what_was_accepted() -> None:
    store = GatedStore()
    writer = BindingWriter(store)

    async def main() -> list[Binding]:
        pending = [asyncio.ensure_future(writer.create(request(i))) for i in range(5)]
        await asyncio.sleep(0)
        threading.Timer(0.05, store.gate.set).start()
        await writer.close()
        assert all(p.done() for p in pending)
        return [p.result() for p in pending]

    assert len(asyncio.run(main())) == 5
    assert len(store.list(tenant="demo")) == 5


def test_close_without_writes_starts_no_thread() -> None:
    writer = BindingWriter(GatedStore())
    asyncio.run(writer.close())
    assert writer._thread is None


@pytest.mark.parametrize("max_batch", [1, 3])
def test_batches_are_capped(max_batch: int) -> None:
    store = GatedStore()
    writer = BindingWriter(store, max_batch=max_batch)

    async def main() -> None:
        first = asyncio.ensure_future(writer.create(request(0)))
        await settle()
        rest = [asyncio.ensure_future(writer.create(request(i))) for i in range(1, 8)]
        await asyncio.sleep(0)
        store.gate.set()
        await asyncio.gather(first, *rest)
        await writer.close()

    asyncio.run(main())
    assert max(store.batches) <= max_batch and sum(store.batches) == 8
