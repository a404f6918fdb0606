"""The asyncio shell (b2bua/engine.py): inside the real SipServer over real loopback UDP
sockets, and over a fake SIP port.

DESIGN rule 15 (no re-entry): the shell performs what the engine asked for after the engine
returned, and a send that fails at once comes back as an event the engine can match. Before,
`udp.send` refusing the trunk's destination delivered TransportFailed inside
`send_request`, before the engine knew its transaction: the event was dropped, the caller
heard 408 after ring_timeout_s and the call stayed in the engine for ever.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
from collections.abc import Callable
from typing import Any

from sipmask.b2bua.engine import Engine
from sipmask.cdr.store import MemoryCdrLog
from sipmask.clock import SystemClock
from sipmask.config import loader
from sipmask.errors import StoreError
from sipmask.server import SipActions, SipServer
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from sipmask.store.base import Binding
from sipmask.store.memory import MemoryStore
from sipmask.store.offload import StoreBusy
from tests.support.engine import (
    A_ADDR,
    A_NUM,
    B_ADDR,
    B_NUM,
    B_SDP,
    AsyncRelaySdp,
    RelaySdp,
    ShellHarness,
    X,
    a_invite,
    b_response,
    bind_axb,
    caller_invite,
    in_dialog,
)
from tests.support.net import LOOPBACK, free_port


class Caller(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[Response] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        message = parse_message(data)
        assert isinstance(message, Response)
        self.received.put_nowait(message)


def caller_bye(ok: Response) -> str:
    """A's BYE in the dialog sipmask's 200 `ok` made."""
    a_inv = caller_invite()
    return in_dialog("BYE", ruri=f"sip:{X}@127.0.0.1:5060", from_=a_inv.headers.get("from") or "",
                     to=ok.headers.get("to") or "", call_id=a_inv.call_id, cseq=11,
                     via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbye")


def test_send_refused_at_once_ends_the_call_with_503() -> None:
    port = free_port()
    config = loader.loads(loader.default_text(), [
        f"sip.listen=[udp://{LOOPBACK}:{port}]",
        # A host name: accepted by the config, refused by the UDP shell (no DNS on the path).
        "trunks.carrier.outbound=udp://sbc.carrier.example:5060"])
    store = MemoryStore(tenants=config.tenants)
    store.create(mode="axb", tenant="demo", a=A_NUM, b=B_NUM, x=X, ttl=0)
    cdrs = MemoryCdrLog()
    engines: list[Engine] = []

    def engine_factory(actions: SipActions) -> Engine:
        engine = Engine(actions, config=config, store=store,  # type: ignore[arg-type]
                        media=AsyncRelaySdp(), cdrs=cdrs, clock=SystemClock())
        engines.append(engine)
        return engine

    async def main() -> list[int]:
        server = SipServer(config, handler_factory=engine_factory)
        await server.start()
        loop = asyncio.get_running_loop()
        transport, caller = await loop.create_datagram_endpoint(
            Caller, local_addr=(LOOPBACK, 0))
        try:
            local = transport.get_extra_info("sockname")
            invite = a_invite().replace("192.0.2.10:5060", f"{local[0]}:{local[1]}")
            transport.sendto(invite.encode(), (LOOPBACK, port))
            statuses: list[int] = []
            while not statuses or statuses[-1] < 200:
                # ring_timeout_s is 60: a final answer within 2 s is the failure itself.
                response = await asyncio.wait_for(caller.received.get(), 2.0)
                statuses.append(response.status)
            return statuses
        finally:
            transport.close()
            server.close()

    assert asyncio.run(main()) == [100, 503]
    [engine] = engines
    assert engine.calls == {}
    [record] = cdrs.records
    assert (record.sip_status, record.unconnected_cause, record.release_side) == (
        503, "trunk_unreachable", "sipmask")


# -- the shell over a fake SIP port (tests/support/engine.ShellHarness) -----------------------
def test_a_whole_call_sends_only_inside_held_batches() -> None:
    """The shell holds the server's sends while it performs a batch of the core's actions
    and flushes them once at its end, also for batches a finished task started."""
    async def flow() -> ShellHarness:
        h = ShellHarness()
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        await h.idle()                                  # A's offer, then leg B
        [b_inv] = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
        h.deliver(b_response(b_inv, 180), B_ADDR)
        h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
        await h.idle()                                  # B's answer, the journal entry
        assert [m.method for m in h.take(B_ADDR) if isinstance(m, Request)] == ["ACK"]
        [ok] = [m for m in h.take(A_ADDR) if isinstance(m, Response) and m.status == 200]
        h.deliver(caller_bye(ok), A_ADDR)
        await h.idle()                                  # the CDR commit
        [bye_b] = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
        h.deliver(b_response(bye_b, 200), B_ADDR)
        await h.idle()
        return h

    h = asyncio.run(flow())
    assert h.unheld == 0 and not h.holding and h.flushes > 0
    assert h.engine.calls == {} and len(h.cdrs.records) == 1


def invited_with_store(name: str, fn: Callable[..., Any]) -> ShellHarness:
    """A's INVITE through a shell whose store's `name` is `fn`, run until idle."""
    async def flow() -> ShellHarness:
        h = ShellHarness()
        setattr(h.store, name, fn)
        h.deliver(a_invite(), A_ADDR)
        await h.idle()
        return h
    return asyncio.run(flow())


def test_the_store_is_asked_after_the_core_returned_and_a_failure_is_500() -> None:
    """DESIGN rule 15: the lookup runs while the shell performs the batch's actions, never
    inside CallCore.handle; a store that fails answers the caller 500 and keeps nothing."""
    stacks: list[list[str]] = []

    def route(x: str, caller: str, now: float) -> Binding | None:
        stacks.append([f.function for f in inspect.stack()])
        raise OSError("store unreachable")
    h = invited_with_store("route", route)
    [stack] = stacks
    assert "_lookup" in stack and "handle" not in stack
    statuses = [m.status for m, _d, _t in h.sent if isinstance(m, Response)]
    assert statuses == [100, 500]
    assert h.engine.active_calls == 0 and h.engine.stats["lookup_failed"] == 1
    assert h.cdrs.records == []


def test_an_unreachable_store_is_503_with_retry_after_and_a_slow_one_blocks_nothing() -> None:
    """A store that answers on its own threads (route_soon, as PostgreSQL does) never holds
    the loop: the lookup's answer comes back as an event when ready; StoreError (a failover,
    a full lookup queue) is 503 with Retry-After, not 500."""
    Lookup = concurrent.futures.Future[Binding | None]
    pending: list[Lookup] = []

    async def flow() -> tuple[ShellHarness, list[int]]:
        h = ShellHarness()

        def route_soon(x: str, caller: str, now: float) -> Lookup:
            future: Lookup = concurrent.futures.Future()
            pending.append(future)
            return future
        h.store.route_soon = route_soon  # type: ignore[attr-defined]
        h.deliver(a_invite(), A_ADDR)
        before = [m.status for m, _d, _t in h.sent if isinstance(m, Response)]
        [lookup] = h.engine._tasks               # the loop is free: the lookup is a task
        assert not lookup.done()
        pending[0].set_exception(StoreError("no primary answers"))
        await h.idle()
        return h, before

    h, before = asyncio.run(flow())
    assert before == [100]                       # the loop went on while the store worked
    responses = [m for m, _d, _t in h.sent if isinstance(m, Response)]
    assert [r.status for r in responses] == [100, 503]
    assert responses[-1].headers.get("retry-after") == "5"
    assert h.engine.active_calls == 0 and h.cdrs.records == []


def test_a_full_lookup_queue_is_503_at_once_not_a_call_left_waiting() -> None:
    """route_soon refuses at once when its queue is full (StoreBusy, store/offload.py): the
    caller gets 503 with Retry-After in the same batch, and no call stays behind waiting
    for a lookup that was never queued."""
    def route_soon(x: str, caller: str, now: float) -> Any:
        raise StoreBusy("1024 store calls already waiting")
    h = invited_with_store("route_soon", route_soon)
    responses = [m for m, _d, _t in h.sent if isinstance(m, Response)]
    assert [r.status for r in responses] == [100, 503]
    assert responses[-1].headers.get("retry-after") == "5"
    assert h.engine.active_calls == 0 and h.cdrs.records == []


def test_a_lookup_the_store_gives_up_is_503_not_a_call_left_waiting() -> None:
    pending: list[concurrent.futures.Future[Binding | None]] = []

    async def flow() -> ShellHarness:
        h = ShellHarness()

        def route_soon(x: str, caller: str, now: float) -> concurrent.futures.Future[Any]:
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            pending.append(future)
            return future
        h.store.route_soon = route_soon  # type: ignore[attr-defined]
        h.deliver(a_invite(), A_ADDR)
        pending[0].cancel()
        await h.idle()
        return h

    h = asyncio.run(flow())
    assert [m.status for m, _d, _t in h.sent if isinstance(m, Response)] == [100, 503]
    assert h.engine.active_calls == 0


class SlowFirstOffer(RelaySdp):
    """The first offer waits until the test opens the gate (a slow rtpengine)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def wait_offer(self, call_id: str, leg: str, sdp: bytes, *,
                         sip_source: str | None = None) -> bytes:
        if len(self.calls) == 0:
            self.calls.append(("waiting", call_id, leg))
            await self.gate.wait()
        return self.offer(call_id, leg, sdp, sip_source=sip_source)


def test_a_slow_media_offer_holds_no_other_call() -> None:
    async def flow() -> tuple[list[str], list[str]]:
        slow = SlowFirstOffer()
        media = AsyncRelaySdp(slow)
        media.offer = slow.wait_offer  # type: ignore[method-assign]
        h = ShellHarness(media=media)
        bind_axb(h)
        h.deliver(a_invite(branch="z9hG4bKslow"), A_ADDR)
        h.deliver(a_invite(branch="z9hG4bKfast", caller=B_NUM), A_ADDR)
        # The second call's offer is answered while the first one's still waits.
        done, waiting = await asyncio.wait(set(h.engine._tasks),
                                           return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1 and len(waiting) == 1
        await h.idle_except(waiting)
        before = [m.uri for m in h.take(B_ADDR) if isinstance(m, Request)]
        slow.gate.set()
        await h.idle()
        after = [m.uri for m in h.take(B_ADDR) if isinstance(m, Request)]
        return before, after

    before, after = asyncio.run(flow())
    assert [uri.split("@")[0] for uri in before] == [f"sip:{A_NUM}"]    # B calls A first
    assert [uri.split("@")[0] for uri in after] == [f"sip:{B_NUM}"]


class _FailingCdrLog(MemoryCdrLog):
    """A CDR store whose every commit fails (a full disk, say)."""

    def write_batch(self, ops: Any) -> None:
        raise OSError("disk full")


def test_cdr_commits_that_fail_are_counted_and_the_call_still_goes_on() -> None:
    """The group commit's failures come back to the core as results with their error: the
    journal entry and the final record each count once, A still gets B's 200 and its BYE
    its 200, and the call ends (nothing waits for a commit for ever)."""
    async def flow() -> ShellHarness:
        h = ShellHarness(cdrs=_FailingCdrLog())
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        await h.idle()
        [b_inv] = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
        h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
        await h.idle()
        [ok] = [m for m in h.take(A_ADDR) if isinstance(m, Response) and m.status == 200]
        h.deliver(caller_bye(ok), A_ADDR)
        await h.idle()
        [bye_b] = [m for m in h.take(B_ADDR) if isinstance(m, Request) and m.method == "BYE"]
        h.deliver(b_response(bye_b, 200), B_ADDR)
        await h.idle()
        assert [m.status for m in h.take(A_ADDR) if isinstance(m, Response)] == [200]
        return h

    h = asyncio.run(flow())
    assert h.engine.stats["cdr_write_failed"] == 2
    assert h.engine.calls == {} and h.cdrs.records == []
