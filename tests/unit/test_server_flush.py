"""SipServer's loop timer: armed lazily, never late. A deadline that moves earlier re-arms at
once; one that moves later (its timer was stopped) keeps the armed handle, which fires,
finds nothing due and arms for the real deadline. The loop is a fake with a settable clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sipmask.config import loader
from sipmask.server import SipServer
from sipmask.sip.parser import parse_message
from sipmask.sip.transaction import RequestReceived, TUEvent
from tests.support import txn_client as client
from tests.support import txn_server as server


class FakeHandle:
    def __init__(self, loop: FakeLoop, when: float, callback: Callable[[], None]) -> None:
        self.loop, self.when, self.callback, self.cancelled = loop, when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.handles: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(self, when, callback)
        self.handles.append(handle)
        return handle

    def armed(self) -> list[float]:
        return [h.when for h in self.handles if not h.cancelled]

    def run_until(self, until: float) -> None:
        """Fire armed handles in order up to `until`, as asyncio would."""
        while True:
            live = [h for h in self.handles if not h.cancelled and h.when <= until]
            if not live:
                self.now = until
                return
            handle = min(live, key=lambda h: h.when)
            self.handles.remove(handle)
            self.now = max(self.now, handle.when)
            handle.callback()


class Recorder:
    def __init__(self, actions: Any) -> None:
        self.requests: list[RequestReceived] = []
        self.events: list[TUEvent] = []

    def handle_request(self, event: RequestReceived) -> None:
        self.requests.append(event)

    def handle_response(self, event: Any) -> None:
        self.events.append(event)

    def handle_event(self, event: TUEvent) -> None:
        self.events.append(event)


def make() -> tuple[SipServer, FakeLoop, list[tuple[float, bytes]]]:
    config = loader.loads("", ["store.path=/tmp/unused.lmdb", "api.listen=null",
                               "sip.listen=['udp://127.0.0.1:5060']"])
    srv = SipServer(config, handler_factory=Recorder)  # type: ignore[arg-type]
    loop = FakeLoop()
    srv._loop = loop  # type: ignore[assignment]
    sent: list[tuple[float, bytes]] = []

    def send(data: bytes, dest: tuple[str, int], transport: str) -> bool:
        sent.append((loop.now, data))
        return True
    srv.send = send  # type: ignore[method-assign]
    return srv, loop, sent


def first_lines(sent: list[tuple[float, bytes]]) -> list[tuple[float, str]]:
    return [(round(at, 3), data.split(b"\r\n", 1)[0].decode()) for at, data in sent]


def test_an_earlier_deadline_rearms_at_once() -> None:
    srv, loop, _ = make()
    srv.send_request(client.request("OPTIONS"), client.PEER, "udp")    # E at 0.5
    assert loop.armed() == [pytest.approx(0.5)]
    srv.message_received(server.incoming(), server.PEER, "udp")         # Trying at 0.2
    assert loop.armed() == [pytest.approx(0.2)]
    assert len(loop.handles) == 2 and loop.handles[0].cancelled


def test_a_later_deadline_keeps_the_armed_handle_and_the_timers_still_fire_on_time() -> None:
    srv, loop, sent = make()
    srv.send_request(client.request("OPTIONS"), client.PEER, "udp")    # E at 0.5
    invite = server.incoming()
    srv.message_received(invite, server.PEER, "udp")                    # Trying at 0.2
    [event] = srv.handler.requests  # type: ignore[attr-defined]
    loop.now = 0.05
    srv.respond(event.txn_id, server.answer(invite, 180))               # Trying stops
    assert loop.armed() == [pytest.approx(0.2)]                         # not re-armed
    calls = len(loop.handles)
    sent.clear()
    loop.run_until(0.2)           # the spare wake-up: nothing due, armed for E
    assert sent == [] and loop.armed() == [pytest.approx(0.5)]
    assert len(loop.handles) == calls                                   # one handle out, one in
    loop.run_until(4.0)           # §17.1.2.2: E at 0.5, 1.5, 3.5 (doubling)
    assert first_lines(sent) == [(0.5, "OPTIONS sip:13900000002@127.0.0.1:5090 SIP/2.0"),
                                 (1.5, "OPTIONS sip:13900000002@127.0.0.1:5090 SIP/2.0"),
                                 (3.5, "OPTIONS sip:13900000002@127.0.0.1:5090 SIP/2.0")]


def test_no_timer_is_armed_when_none_runs_and_a_flush_without_change_arms_nothing() -> None:
    srv, loop, sent = make()
    srv.core.trying_delay = None
    srv.message_received(server.incoming("OPTIONS"), server.PEER, "udp")
    assert loop.handles == []                 # a non-INVITE server runs no timer in Trying
    [event] = srv.handler.requests  # type: ignore[attr-defined]
    srv.respond(event.txn_id, server.answer(server.incoming("OPTIONS"), 200))
    assert loop.armed() == [pytest.approx(32.0)]                        # Timer J
    srv._flush()
    srv._flush()
    assert len(loop.handles) == 1
    loop.run_until(40.0)
    assert len(srv.core) == 0 and loop.armed() == []
    assert [parse_message(data).status for _, data in sent] == [200]  # type: ignore[union-attr]


def test_the_2xx_is_retransmitted_on_its_schedule_until_the_ack() -> None:
    """§13.3.1.4 through the server: T1, 2*T1, 4*T1 … with the loop timer armed lazily."""
    srv, loop, sent = make()
    invite = server.incoming()
    srv.message_received(invite, server.PEER, "udp")
    [event] = srv.handler.requests  # type: ignore[attr-defined]
    srv.respond(event.txn_id, server.answer(invite, 200))
    sent.clear()
    loop.run_until(3.6)
    assert [at for at, _ in first_lines(sent)] == [0.5, 1.5, 3.5]
    ack = server.incoming("ACK", branch="z9hG4bKack", to_tag="b2b")
    srv.message_received(ack, server.PEER, "udp")
    sent.clear()
    loop.run_until(40.0)
    assert sent == [] and len(srv.core) == 0


class FailsFirst(Recorder):
    """A handler whose first request raises (a bug in the B2BUA, say)."""

    def handle_request(self, event: RequestReceived) -> None:
        if not self.requests:
            self.requests.append(event)
            raise RuntimeError("handler bug")
        self.requests.append(event)


def test_a_failing_handler_gets_its_request_answered_500_and_the_batch_goes_on() -> None:
    """Two requests in one batch of events: the first one's handler raises. Its server
    transaction is answered 500 (it must not stay open until the peer gives up) and the
    second request still reaches the handler."""
    srv, loop, sent = make()
    srv.handler = FailsFirst(srv)
    first = server.incoming("OPTIONS", branch="z9hG4bKfail1")
    second = server.incoming("OPTIONS", branch="z9hG4bKfail2", cseq=2)
    srv.core.receive(first, server.PEER, "udp", loop.now)
    srv.core.receive(second, server.PEER, "udp", loop.now)
    srv._drain()
    handled = srv.handler.requests  # type: ignore[attr-defined]
    assert [e.request.top_via.branch for e in handled] == ["z9hG4bKfail1", "z9hG4bKfail2"]
    answers = [parse_message(data) for _, data in sent]
    assert [(a.status, a.top_via.branch) for a in answers] == [  # type: ignore[union-attr]
        (500, "z9hG4bKfail1")]
    assert srv.counters.internal_errors == 1
