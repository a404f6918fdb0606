"""The sans-IO call core (b2bua/core.py) driven directly, on a fake clock, no event loop.

Its interface: events in (`handle(event, now, wall)`), actions out (`actions()`), results
of actions back as events with the id the core chose; time-driven decisions on the injected
clock (the call's ring and max-duration timers; the transaction layer's 64*T1 ACK wait on
the same clock; the media backend's silence report as an event). A slow store or media
backend is a result the test holds back while the rest goes on.
"""

from __future__ import annotations

from typing import Any

import pytest

from sipmask.b2bua.actions import (
    CdrCommitted,
    LookupDone,
    MediaDone,
    MediaOffer,
    MediaTimeout,
    Respond,
)
from sipmask.b2bua.call import CallState
from sipmask.errors import MediaError, SipError
from sipmask.sip.message import Request, Response
from sipmask.sip.transaction import RequestReceived
from tests.support.engine import (
    A_ADDR,
    A_NUM,
    A_SDP,
    B_ADDR,
    B_NUM,
    B_SDP,
    Harness,
    RelaySdp,
    X,
    a_cancel,
    a_invite,
    answered_call,
    b_response,
    bind_axb,
    caller_invite,
    in_dialog,
)


def requests(h: Harness, dest: tuple[str, int]) -> list[Request]:
    return [m for m in h.take(dest) if isinstance(m, Request)]


def finals(h: Harness, dest: tuple[str, int] = A_ADDR) -> list[int]:
    return [m.status for m in h.take(dest) if isinstance(m, Response) and m.status >= 200]


def answer_byes(h: Harness) -> None:
    """Both parties answer our BYEs 200."""
    for dest in (A_ADDR, B_ADDR):
        for bye in [m for m, d, _t in h.sent if d == dest and isinstance(m, Request)
                    and m.method == "BYE"]:
            h.deliver(b_response(bye, 200).replace("200 Whatever", "200 OK"), dest)


class MaxDuration:
    """A policy that admits everyone and limits every answered call to `limit_s`."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s

    def admit(self, *args: Any, **kw: Any) -> None:
        pass

    admit_attempt = admit_route = call_started = call_ended = admit

    def max_duration(self, binding: Any) -> float | None:
        return self.limit_s


# -- the interface --------------------------------------------------------------------------
def test_an_invite_asks_for_the_lookup_and_waits_for_its_result() -> None:
    h = Harness()
    bind_axb(h)
    h.layer.receive(caller_invite(), A_ADDR, "udp", h.clock.monotonic())
    [event] = h.layer.events()
    assert isinstance(event, RequestReceived)
    h.core.handle(event, h.clock.monotonic(), h.clock.wall())
    trying, lookup = h.core.actions()
    assert isinstance(trying, Respond) and trying.response.status == 100
    assert (type(lookup).__name__, lookup.x, lookup.caller) == ("Lookup", X, A_NUM)  # type: ignore[union-attr]
    assert h.core.actions() == []                       # each action is handed out once
    assert h.core.active_calls == 1 and h.core.calls == {}
    # The result, with the id the core chose, makes the call and asks for A's offer.
    h.core.handle(LookupDone(lookup.id, h.store.route(X, A_NUM, h.clock.wall())),  # type: ignore[union-attr]
                  h.clock.monotonic(), h.clock.wall())
    [offer] = h.core.actions()
    assert isinstance(offer, MediaOffer) and offer.leg == "a" and offer.sdp == A_SDP
    assert offer.sip_source == A_ADDR[0]
    # A result nobody waits for (a duplicate) changes nothing.
    h.core.handle(LookupDone(lookup.id, None), h.clock.monotonic(), h.clock.wall())  # type: ignore[union-attr]
    assert h.core.actions() == []


def test_the_cdr_is_committed_before_the_final_response_is_asked_for() -> None:
    h = Harness()
    h.hold.add(CdrCommitted)
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    [b_inv] = requests(h, B_ADDR)
    h.deliver(b_response(b_inv, 486), B_ADDR)
    assert finals(h) == []                               # waits for the commit
    [record] = h.cdrs.records
    assert record.sip_status == 486
    h.release()
    assert finals(h) == [486]
    h.assert_nothing_left()


# -- time: ring timeout, max duration, the ACK wait, media timeout ------------------------------
def test_ring_timeout_counts_from_leg_b_and_stops_when_b_answers() -> None:
    h = Harness(ring_timeout_s=30)
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    [b_inv] = requests(h, B_ADDR)
    # B's 100 Trying stops the trunk's failover timer (b2bua/failover.py); the ring goes on.
    h.deliver(b_response(b_inv, 100), B_ADDR)
    assert h.core.next_timer() == h.clock.monotonic() + 30
    h.advance(29.9)
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    h.take()
    h.advance(1.0)
    assert [m.method for m in requests(h, B_ADDR)] == []   # no CANCEL, no BYE
    [ctx] = h.core.calls.values()
    assert ctx.call.state is CallState.ANSWERED and h.core.next_timer() is None


def test_max_duration_counts_talk_time_from_the_answer() -> None:
    h = Harness(policy=lambda config, clock: MaxDuration(10.0))  # type: ignore[arg-type,return-value]
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    [b_inv] = requests(h, B_ADDR)
    h.deliver(b_response(b_inv, 180), B_ADDR)
    h.advance(5)                                         # ringing does not count
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    h.take()
    h.advance(9.999)
    assert requests(h, A_ADDR) == [] and requests(h, B_ADDR) == []
    h.advance(0.001)
    assert [m.method for m in requests(h, A_ADDR)] == ["BYE"]
    assert [m.method for m in requests(h, B_ADDR)] == ["BYE"]
    answer_byes(h)
    [cdr] = h.cdrs.records
    assert (cdr.duration_s, cdr.release_side) == (10.0, "sipmask")
    h.assert_nothing_left()


def test_a_2xx_never_acknowledged_ends_the_call_after_64_t1() -> None:
    """§13.3.1.4: the UAS core gives up retransmitting its 2xx after 64*T1 (32 s) and
    SHOULD end the session with BYE: the transaction layer's Timer L, on the same fake
    clock, reports AckTimeout and the core hangs up both legs."""
    h = Harness()
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    [b_inv] = requests(h, B_ADDR)
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    h.take()
    h.advance(31.9)
    assert requests(h, B_ADDR) == []                      # the 2xx is still retransmitted
    assert [m.status for m in h.take(A_ADDR) if isinstance(m, Response)] != []
    h.advance(0.2)
    assert [m.method for m in requests(h, A_ADDR)] == ["BYE"]
    assert [m.method for m in requests(h, B_ADDR)] == ["BYE"]
    answer_byes(h)
    [cdr] = h.cdrs.records
    assert (cdr.release_side, cdr.sip_status) == ("sipmask", 200)
    h.assert_nothing_left()


def test_media_timeout_hangs_up_both_legs_and_an_unknown_call_is_ignored() -> None:
    h = Harness()
    answered_call(h)
    h.take()
    [ctx] = h.core.calls.values()
    h.feed(MediaTimeout("no-such-call"))
    assert h.take() == []
    h.feed(MediaTimeout(ctx.call.call_id))
    assert [m.method for m in requests(h, A_ADDR)] == ["BYE"]
    assert [m.method for m in requests(h, B_ADDR)] == ["BYE"]
    answer_byes(h)
    [cdr] = h.cdrs.records
    assert cdr.release_side == "sipmask"
    assert h.media.deleted == [ctx.call.call_id]
    h.assert_nothing_left()


# -- results that take long ------------------------------------------------------------------
def test_a_cancel_before_the_lookup_answers_places_no_leg_b() -> None:
    h = Harness()
    h.hold.add(LookupDone)                  # the store answers late (a network round trip)
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    statuses = [(m.status, m.cseq.method) for m in h.take(A_ADDR) if isinstance(m, Response)]
    assert statuses == [(100, "INVITE"), (200, "CANCEL")]
    assert h.core.active_calls == 1
    h.release()
    assert finals(h) == [487]
    assert h.take(B_ADDR) == [] and h.media.calls == []
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.release_side, cdr.callee) == (487, "caller", B_NUM)
    h.assert_nothing_left()


def test_a_cancelled_lookup_that_finds_nothing_is_still_refused_and_recorded() -> None:
    h = Harness()
    h.hold.add(LookupDone)
    h.deliver(a_invite(), A_ADDR)                        # X is not bound: 404
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    h.release()
    assert [m.status for m in h.take(A_ADDR) if isinstance(m, Response)
            and m.cseq.method == "INVITE"] == [100, 404]
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause) == (404, "no_binding")
    h.assert_nothing_left()


def test_other_calls_go_on_while_one_lookup_is_out() -> None:
    h = Harness()
    h.hold.add(LookupDone)
    bind_axb(h)
    h.deliver(a_invite(branch="z9hG4bKslow"), A_ADDR)
    h.deliver(a_invite(branch="z9hG4bKfast", caller=B_NUM), A_ADDR)
    slow, fast = h.held
    h.held = [slow]
    h.hold.clear()
    h.feed(fast)                           # the second call's store answered first
    [b_inv] = requests(h, B_ADDR)
    assert b_inv.uri.startswith(f"sip:{A_NUM}@")         # B called A
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    h.take()
    [ctx] = h.core.calls.values()
    assert ctx.call.state is CallState.ANSWERED
    h.advance(5.0)                                       # the first lookup takes 5 s
    h.release()
    [b_inv2] = requests(h, B_ADDR)
    assert b_inv2.uri.startswith(f"sip:{B_NUM}@")
    first = next(c for c in h.core.calls.values() if c.call.caller == A_NUM)
    assert first.call.invite_at == h.clock.wall() - 5.0  # the INVITE's time, not the answer's


@pytest.mark.parametrize(("error", "status"), [
    (MediaError("rtpengine did not answer"), 503),
    (SipError("Not Acceptable Here", status=488), 488),
])
def test_a_refused_offer_answers_the_caller_and_leaks_nothing(error: Exception,
                                                             status: int) -> None:
    class Refusing(RelaySdp):
        def offer(self, call_id: str, leg: str, sdp: bytes, *,
                  sip_source: str | None = None) -> bytes:
            self.calls.append(("offer", call_id, leg))
            raise error

    h = Harness(media=Refusing())
    bind_axb(h)
    for i in range(20):
        h.deliver(a_invite(branch=f"z9hG4bKr{i}"), A_ADDR)
    assert finals(h) == [status] * 20
    assert h.take(B_ADDR) == []
    assert {(c.sip_status, c.unconnected_cause) for c in h.cdrs.records} == {
        (status, "callee_failed")}
    assert h.media.deleted == []                         # nothing was opened
    h.assert_nothing_left()


def test_events_of_a_waiting_call_run_after_it_in_order() -> None:
    """B's 183 waits for its SDP answer from the media backend; B's 200, which arrives
    meanwhile, waits behind it: the caller hears 183 before 200."""
    h = Harness()
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    [b_inv] = requests(h, B_ADDR)
    h.take()
    h.hold.add(MediaDone)
    h.deliver(b_response(b_inv, 183, sdp=B_SDP), B_ADDR)
    h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
    assert h.take(A_ADDR) == [] and len(h.held) == 1     # the 200's answer not asked yet
    h.hold.clear()
    h.release()
    assert [m.status for m in h.take(A_ADDR) if isinstance(m, Response)] == [183, 200]


def test_a_request_the_shell_cannot_start_ends_the_call_503_unreachable() -> None:
    h = Harness()
    h.refuse_sends = True
    bind_axb(h)
    h.deliver(a_invite(), A_ADDR)
    assert finals(h) == [503]
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause) == (503, "trunk_unreachable")
    h.assert_nothing_left()



def test_a_session_first_opened_by_a_reinvite_is_given_back() -> None:
    """DESIGN rule 13. A call set up without SDP (INVITE and 200 both empty) gets its first
    media session from A's re-INVITE; on main the session was never marked open, so the
    call's end deleted nothing and the relay kept its ports. Every media step that succeeds
    marks the session open now (CallCore._on_done)."""
    h = Harness()
    bind_axb(h)
    invite = a_invite()
    h.deliver(invite[:invite.index("Content-Type:")] + "Content-Length: 0\r\n\r\n", A_ADDR)
    [b_inv] = requests(h, B_ADDR)
    h.deliver(b_response(b_inv, 200), B_ADDR)                # no SDP either
    assert [m.status for m in h.take(A_ADDR) if isinstance(m, Response)] == [100, 200]
    [ctx] = h.core.calls.values()
    a_inv = caller_invite()
    dialog = {"from_": a_inv.headers.get("from") or "", "call_id": a_inv.call_id,
              "ruri": f"sip:{X}@127.0.0.1:5060", "to": f"<sip:{X}@127.0.0.1>;tag={ctx.a_tag}"}
    h.deliver(in_dialog("ACK", **dialog, cseq=10,
                        via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack1"), A_ADDR)
    h.take()
    reinvite = in_dialog("INVITE", **dialog, cseq=12,
                         via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKre")
    h.deliver(reinvite.replace("Content-Length: 0\r\n\r\n",
                               f"Content-Type: application/sdp\r\nContent-Length: "
                               f"{len(A_SDP)}\r\n\r\n{A_SDP.decode()}"), A_ADDR)
    [re_b] = requests(h, B_ADDR)
    h.deliver(b_response(re_b, 200, sdp=B_SDP), B_ADDR)
    h.take()
    h.deliver(in_dialog("BYE", **dialog, cseq=13,
                        via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbye"), A_ADDR)
    assert [op for op, _call, _leg in h.media.calls] == ["offer", "answer"]
    assert h.media.deleted == [ctx.call.call_id]
