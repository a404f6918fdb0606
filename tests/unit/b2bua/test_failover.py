"""A trunk with several targets (issue 14 §4, RFC 3263 §4.3), in the call core on the fake
clock: a 503, a transport error or no response at all within failover_timeout_ms sends leg
B's INVITE to the next target as a new transaction; the attempt given up is cancelled or,
when it answers late, hung up; when every target failed the caller hears the last status a
target gave, or 503 trunk_unreachable when none answered. Helpers: tests/support/engine.py.
"""

from __future__ import annotations

from sipmask.b2bua.actions import MediaDone, TrunkTargets
from sipmask.sip.locate import Server, Target
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from sipmask.sip.transaction import StrayResponse
from tests.support.engine import (
    A_ADDR,
    A_SDP,
    B_ADDR,
    B_NUM,
    B_SDP,
    Harness,
    X,
    a_cancel,
    a_invite,
    b_response,
    bind_axb,
    caller_invite,
    in_dialog,
)

C_ADDR = ("127.0.0.4", 5090)          # the trunk's second target
TWO = "trunks.carrier.outbound=[udp://127.0.0.1:5090, udp://127.0.0.4:5090]"
TIMEOUT_MS = "trunks.carrier.failover_timeout_ms=2000"


def harness(*overrides: str) -> Harness:
    h = Harness(overrides=[TWO, TIMEOUT_MS, *overrides])
    bind_axb(h)
    return h


def requests(h: Harness, dest: tuple[str, int]) -> list[Request]:
    return [m for m in h.take(dest) if isinstance(m, Request)]


def responses(h: Harness, dest: tuple[str, int]) -> list[Response]:
    return [m for m in h.take(dest) if isinstance(m, Response)]


def c_response(invite: Request, status: int, **kw: object) -> str:
    """The second target's answer: b_response with its own Contact."""
    return b_response(invite, status, **kw).replace(  # type: ignore[arg-type]
        "127.0.0.1:5090", "127.0.0.4:5090")


def branch(request: Request) -> str:
    via = request.headers.get("via") or ""
    return via.split("branch=")[1].split(";")[0]


def hang_up_from_a(h: Harness, ok: Response) -> None:
    a_inv = caller_invite()
    for method, cseq in (("ACK", 10), ("BYE", 11)):
        h.deliver(in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060",
                            from_=a_inv.headers.get("from") or "",
                            to=ok.headers.get("to") or "", call_id=a_inv.call_id, cseq=cseq,
                            via=f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKend{cseq}"),
                  A_ADDR)


def start(h: Harness) -> Request:
    h.deliver(a_invite(), A_ADDR)
    assert [m.status for m in responses(h, A_ADDR)] == [100]
    [first] = requests(h, B_ADDR)
    assert first.method == "INVITE"
    return first


def test_503_from_the_first_target_sends_a_new_invite_transaction_to_the_next() -> None:
    h = harness()
    first = start(h)
    h.deliver(b_response(first, 503), B_ADDR)
    assert [m.method for m in requests(h, B_ADDR)] == ["ACK"]     # the layer's, §17.1.1.3
    [second] = requests(h, C_ADDR)
    assert responses(h, A_ADDR) == []                             # the caller hears nothing yet
    assert second.method == "INVITE"
    assert second.uri == f"sip:{B_NUM}@127.0.0.4:5090;user=phone"
    assert second.to.uri.host == "127.0.0.4"  # type: ignore[union-attr]
    # RFC 3263 §4.3: a new transaction (branch); the same call (Call-ID), a dialog of its
    # own (From tag) and the next CSeq (RFC 3261 §8.2.2.2: never a "merged request").
    assert branch(second) != branch(first)
    assert second.call_id == first.call_id
    assert second.from_.tag != first.from_.tag
    assert second.cseq.number == first.cseq.number + 1
    assert second.body == first.body
    assert h.core.stats["trunk_failover"] == 1                    # sipmask_trunk_events_total
    h.deliver(c_response(second, 180, tag="tc1"), C_ADDR)
    h.deliver(c_response(second, 200, tag="tc1", sdp=B_SDP), C_ADDR)
    assert [m.method for m in requests(h, C_ADDR)] == ["ACK"]
    ringing, ok = responses(h, A_ADDR)
    assert (ringing.status, ok.status) == (180, 200)
    hang_up_from_a(h, ok)
    [bye] = requests(h, C_ADDR)                                   # the live callee's dialog
    assert bye.method == "BYE" and bye.from_.tag == second.from_.tag
    h.deliver(c_response(bye, 200, tag="tc1"), C_ADDR)
    h.advance(40)
    h.assert_nothing_left()
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause) == (200, "none")


def test_no_response_within_the_failover_timeout_goes_to_the_next_target() -> None:
    h = harness()
    first = start(h)
    h.advance(1.999)
    assert requests(h, C_ADDR) == []                              # not before the timeout
    h.advance(0.001)
    [second] = requests(h, C_ADDR)
    assert second.method == "INVITE" and branch(second) != branch(first)
    # The first target wakes up: its 180 gets the CANCEL the layer held (§9.1), never
    # reaches the caller; its 487 is ACKed by the layer.
    h.deliver(b_response(first, 180, tag="late"), B_ADDR)
    assert [m.method for m in requests(h, B_ADDR) if m.cseq.method != "INVITE"] == ["CANCEL"]
    assert responses(h, A_ADDR) == []
    h.deliver(b_response(first, 487, tag="late"), B_ADDR)
    assert [m.method for m in requests(h, B_ADDR)] == ["ACK"]
    assert responses(h, A_ADDR) == []
    h.deliver(c_response(second, 200, tag="tc1", sdp=B_SDP), C_ADDR)
    [ok] = responses(h, A_ADDR)
    assert ok.status == 200
    hang_up_from_a(h, ok)
    [bye] = requests(h, C_ADDR)[-1:]
    h.deliver(c_response(bye, 200, tag="tc1"), C_ADDR)
    h.advance(40)
    h.assert_nothing_left()


def test_a_late_2xx_from_the_abandoned_target_is_acked_and_hung_up() -> None:
    h = harness()
    first = start(h)
    h.advance(2.0)
    [second] = requests(h, C_ADDR)
    h.deliver(c_response(second, 180, tag="tc1"), C_ADDR)
    assert [m.status for m in responses(h, A_ADDR)] == [180]
    late_ok = b_response(first, 200, tag="late", sdp=B_SDP)
    h.deliver(late_ok, B_ADDR)
    sent = [m for m in requests(h, B_ADDR) if m.method != "INVITE"]
    assert [m.method for m in sent] == ["ACK", "BYE"]              # RFC 3261 §15
    assert all(m.to.tag == "late" and m.from_.tag == first.from_.tag for m in sent)
    assert responses(h, A_ADDR) == []                              # no second callee
    assert h.core.stats["trunk_late_answer"] == 1
    h.deliver(late_ok, B_ADDR)                  # a retransmission: the layer's ACK, no BYE
    assert [m.method for m in requests(h, B_ADDR)] == ["ACK"]
    h.deliver(b_response(sent[1], 200, tag="late"), B_ADDR)
    # Past Timer M the first target's 2xx is a stray: it is no answer of this call.
    h.advance(33)
    stray = parse_message(late_ok.encode())
    assert isinstance(stray, Response)
    h.feed(StrayResponse(stray, B_ADDR, "udp"))
    assert responses(h, A_ADDR) == []
    h.deliver(c_response(second, 200, tag="tc1", sdp=B_SDP), C_ADDR)
    [ok] = responses(h, A_ADDR)
    assert ok.status == 200
    [call] = h.core.calls.values()
    assert h.core.calls and call.b_dialog is not None and call.b_dialog.remote_tag == "tc1"
    hang_up_from_a(h, ok)
    [bye] = requests(h, C_ADDR)[-1:]
    h.deliver(c_response(bye, 200, tag="tc1"), C_ADDR)
    h.advance(40)
    h.assert_nothing_left()


def test_when_no_target_answers_the_caller_gets_503_trunk_unreachable() -> None:
    h = harness()
    start(h)
    h.advance(2.0)
    assert [m.method for m in requests(h, C_ADDR)] == ["INVITE"]
    assert responses(h, A_ADDR) == []
    h.advance(2.0)
    [final] = responses(h, A_ADDR)
    assert final.status == 503
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause, cdr.release_side) == (
        503, "trunk_unreachable", "sipmask")
    h.advance(40)          # both INVITEs run out of Timer B with their CANCELs held
    h.assert_nothing_left()
    assert h.layer.gauges()["invite_client"] == 0


def test_when_one_target_answered_its_status_reaches_the_caller_unchanged() -> None:
    h = harness()
    first = start(h)
    h.deliver(b_response(first, 503, extra="Retry-After: 30\r\n"), B_ADDR)
    h.take(B_ADDR)
    assert [m.method for m in requests(h, C_ADDR)] == ["INVITE"]
    h.advance(2.0)                                 # the second target never answers
    [final] = responses(h, A_ADDR)
    assert final.status == 503 and final.headers.get("retry-after") == "30"
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause) == (503, "callee_failed")
    h.advance(40)
    h.assert_nothing_left()


def test_a_final_other_than_503_is_the_callees_answer_and_stops_the_search() -> None:
    h = harness()
    first = start(h)
    h.deliver(b_response(first, 486), B_ADDR)
    [final] = responses(h, A_ADDR)
    assert final.status == 486
    assert requests(h, C_ADDR) == []


def test_a_transport_error_goes_to_the_next_target_at_once() -> None:
    h = harness("trunks.carrier.outbound=[tcp://127.0.0.1:5090, udp://127.0.0.4:5090]")
    start(h)
    h.layer.transport_error(B_ADDR, "tcp", h.clock.monotonic())
    h._to_core()
    [second] = requests(h, C_ADDR)
    assert second.method == "INVITE"
    assert ";transport=" not in (second.headers.get("contact") or "")  # UDP now


def test_a_cancel_during_the_second_attempt_cancels_it_and_leaves_nothing() -> None:
    h = harness()
    first = start(h)
    h.deliver(b_response(first, 503), B_ADDR)
    [second] = requests(h, C_ADDR)
    h.deliver(c_response(second, 180, tag="tc1"), C_ADDR)
    h.take(A_ADDR)
    h.deliver(a_cancel(caller_invite()), A_ADDR)
    assert sorted(m.status for m in responses(h, A_ADDR)) == [200, 487]
    [cancel] = requests(h, C_ADDR)
    assert cancel.method == "CANCEL" and branch(cancel) == branch(second)
    h.deliver(c_response(second, 487, tag="tc1"), C_ADDR)
    h.advance(40)
    h.assert_nothing_left()


def test_the_shells_targets_set_the_order_and_none_is_503_at_once() -> None:
    h = harness()
    c, b = (Target(Server("udp", *C_ADDR), "sbc2.carrier.example", None),
            Target(Server("udp", *B_ADDR), "127.0.0.1", 5090))
    h.feed(TrunkTargets("carrier", (c, b)))
    h.deliver(a_invite(), A_ADDR)
    [invite] = requests(h, C_ADDR)
    # RFC 3263: the URI keeps the name; only where the request goes is resolved.
    assert invite.uri == f"sip:{B_NUM}@sbc2.carrier.example;user=phone"
    h.feed(TrunkTargets("carrier", ()))
    h.deliver(a_invite(branch="z9hG4bKa2"), A_ADDR)
    assert [m.status for m in responses(h, A_ADDR)] == [100, 100, 503]
    records = [r for r in h.cdrs.records if r.sip_status == 503]
    assert [(r.unconnected_cause, r.release_side) for r in records] == [
        ("trunk_unreachable", "sipmask")]
    assert len(h.media.calls) == 1                      # no media for the call with no target
    assert h.core.stats["trunk_no_target"] == 1


def test_one_silent_target_is_503_trunk_unreachable_after_the_failover_timeout() -> None:
    h = Harness(overrides=["trunks.carrier.failover_timeout_ms=1500"])
    bind_axb(h)
    start(h)
    h.advance(1.499)
    assert responses(h, A_ADDR) == []
    h.advance(0.001)
    assert [m.status for m in responses(h, A_ADDR)] == [503]
    [cdr] = h.cdrs.records
    assert cdr.unconnected_cause == "trunk_unreachable"
    h.advance(40)
    h.assert_nothing_left()


def test_a_100_trying_stops_the_failover_timer() -> None:
    h = harness()
    first = start(h)
    h.deliver(b_response(first, 100), B_ADDR)
    h.advance(10)
    assert requests(h, C_ADDR) == []
    assert responses(h, A_ADDR) == []
    h.deliver(b_response(first, 200, sdp=B_SDP), B_ADDR)
    assert [m.status for m in responses(h, A_ADDR)] == [200]


def test_a_late_answer_to_the_abandoned_targets_prack_leaves_the_next_attempt_timed() -> None:
    """The next attempt's failover timer counts from its own INVITE: a response to a PRACK
    of the first target's (RFC 3262) after the failover is no word from the new target."""
    h = harness()
    first = start(h)
    h.deliver(b_response(first, 183, tag="t1", extra="Require: 100rel\r\nRSeq: 1\r\n"), B_ADDR)
    [prack] = [m for m in requests(h, B_ADDR) if m.method == "PRACK"]
    assert [m.status for m in responses(h, A_ADDR)] == [183]
    h.deliver(b_response(first, 503, tag="t1"), B_ADDR)
    assert [m.method for m in requests(h, C_ADDR)] == ["INVITE"]
    h.deliver(b_response(prack, 200, tag="t1"), B_ADDR)
    h.advance(2.0)                                  # the second target stays silent
    assert [m.status for m in responses(h, A_ADDR)] == [503]
    h.advance(40)
    h.assert_nothing_left()


def test_a_failover_waits_for_an_early_update_s_media_step_in_the_call_s_order() -> None:
    """A caller's UPDATE (RFC 3311, early dialog) waits for the media backend when the
    first target gives up. The failover waits its turn in the call's order: the UPDATE
    reaches the dialog it was for first, then the next target gets its INVITE; the call
    goes on and nothing is left."""
    h = harness()
    first = start(h)
    h.deliver(b_response(first, 183, tag="tb1", sdp=B_SDP), B_ADDR)
    [early] = responses(h, A_ADDR)
    assert early.status == 183
    [ctx] = h.core.calls.values()
    a_inv = caller_invite()
    update = in_dialog("UPDATE", ruri=f"sip:{X}@127.0.0.1:5060",
                       from_=a_inv.headers.get("from") or "",
                       to=f"<sip:{X}@127.0.0.1>;tag={ctx.a_tag}", call_id=a_inv.call_id,
                       cseq=11, via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKup11")
    update = update.replace("Content-Length: 0\r\n\r\n",
                            f"Content-Type: application/sdp\r\nContent-Length: {len(A_SDP)}"
                            f"\r\n\r\n{A_SDP.decode()}")
    h.hold.add(MediaDone)
    h.deliver(update, A_ADDR)
    assert requests(h, B_ADDR) == []                  # waiting for the backend
    h.deliver(b_response(first, 503, tag="tb1"), B_ADDR)
    assert requests(h, C_ADDR) == []                  # the failover waits its turn
    h.hold.clear()
    h.release()
    ack_503, relayed = requests(h, B_ADDR)            # the layer ACKed the 503 at once
    assert (ack_503.method, relayed.method) == ("ACK", "UPDATE")
    assert relayed.to.tag == "tb1"
    [second] = requests(h, C_ADDR)
    assert second.method == "INVITE"
    h.deliver(b_response(relayed, 481, tag="tb1"), B_ADDR)   # the old target forgot it
    assert [(r.status, r.cseq.method) for r in responses(h, A_ADDR)] == [(481, "UPDATE")]
    h.deliver(c_response(second, 200, tag="tc1", sdp=B_SDP), C_ADDR)
    ok = [r for r in responses(h, A_ADDR) if r.status == 200]
    assert len(ok) == 1
    for method, cseq in (("ACK", 10), ("BYE", 12)):
        h.deliver(in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060",
                            from_=a_inv.headers.get("from") or "",
                            to=ok[0].headers.get("to") or "", call_id=a_inv.call_id,
                            cseq=cseq, via=f"SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKe{cseq}"),
                  A_ADDR)
    [ack, bye] = requests(h, C_ADDR)
    assert (ack.method, bye.method) == ("ACK", "BYE")
    h.deliver(c_response(bye, 200, tag="tc1"), C_ADDR)
    h.advance(40)
    h.assert_nothing_left()
