"""The engine over the real transaction layer: the basic call flows (helpers in
tests/support/engine.py)."""

from __future__ import annotations

import pytest

from sipmask.b2bua.call import CallState
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from tests.support.engine import (
    A_ADDR,
    A_NUM,
    A_SDP,
    B_ADDR,
    B_NUM,
    B_SDP,
    STRANGER,
    Harness,
    X,
    a_cancel,
    a_invite,
    answered_call,
    b_response,
    bind_axb,
    in_dialog,
    no_identity,
    run,
)


def test_answered_call_is_masked_both_ways_and_recorded() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        [trying] = h.take(A_ADDR)
        assert isinstance(trying, Response) and trying.status == 100
        [b_inv] = h.take(B_ADDR)
        assert isinstance(b_inv, Request)
        # Leg B: X calls B; nothing of A.
        assert b_inv.uri == f"sip:{B_NUM}@127.0.0.1:5090;user=phone"
        assert b_inv.from_.uri.user == X  # type: ignore[union-attr]
        # The From tag has letters beyond hex, so no random tag or Call-ID can contain it.
        no_identity(b_inv, A_NUM, "192.0.2.10", "acall", "Zhang", "leaky", "16000", "fromzq1")
        assert b_inv.headers.get("max-forwards") == "69"
        h.deliver(b_response(b_inv, 180), B_ADDR)
        h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
        [ack_b] = h.take(B_ADDR)
        assert isinstance(ack_b, Request) and ack_b.method == "ACK"
        assert ack_b.to.tag == "tb1" and ack_b.cseq.number == 1
        ringing, ok = h.take(A_ADDR)
        assert isinstance(ringing, Response) and isinstance(ok, Response)
        assert (ringing.status, ok.status) == (180, 200)
        for resp in (ringing, ok):
            no_identity(resp, B_NUM, "198.51.100.7", "callee-pbx", "18000", "tb1", "bob")
            assert resp.headers.get("call-id") == "acall-z9hG4bKa1@192.0.2.10"
        assert ringing.to.tag == ok.to.tag  # one dialog with A
        assert b"m=audio 30000" in ok.body
        assert ok.headers.get("contact") == f"<sip:{X}@127.0.0.1:5060>"
        [call] = h.core.calls.values()
        assert call.call.state is CallState.ANSWERED
        # A acknowledges, talks, hangs up.
        a_inv = parse_message(a_invite().encode())
        assert isinstance(a_inv, Request)
        from_a, to_a = a_inv.headers.get("from") or "", ok.headers.get("to") or ""
        h.deliver(in_dialog("ACK", ruri=f"sip:{X}@127.0.0.1:5060", from_=from_a, to=to_a,
                                  call_id=a_inv.call_id, cseq=10,
                                  via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKack"), A_ADDR)
        assert call.call.state is CallState.CONFIRMED
        h.deliver(in_dialog("BYE", ruri=f"sip:{X}@127.0.0.1:5060", from_=from_a, to=to_a,
                                  call_id=a_inv.call_id, cseq=11,
                                  via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKbye"), A_ADDR)
        [bye_ok] = h.take(A_ADDR)
        assert isinstance(bye_ok, Response) and bye_ok.status == 200
        [bye_b] = h.take(B_ADDR)
        assert isinstance(bye_b, Request) and bye_b.method == "BYE"
        assert bye_b.uri == f"sip:{B_NUM}@127.0.0.1:5090"     # B's Contact
        no_identity(bye_b, A_NUM, "192.0.2.10")
        assert len(h.cdrs.records) == 1                       # written before the 200 left
        h.deliver(b_response(bye_b, 200), B_ADDR)
        assert h.core.calls == {}
        assert h.media.deleted == [call.call.call_id]

    h = run(flow)
    [cdr] = h.cdrs.records
    assert (cdr.tenant, cdr.x, cdr.caller, cdr.callee, cdr.direction) == (
        "demo", X, A_NUM, B_NUM, "a_to_b")
    assert (cdr.sip_status, cdr.release_side, cdr.unconnected_cause) == (200, "caller", "none")
    assert cdr.ring_at is not None and cdr.answer_at is not None and cdr.end_at is not None
    assert cdr.invite_at <= cdr.ring_at <= cdr.answer_at <= cdr.end_at


def test_callee_hangs_up() -> None:
    def flow(h: Harness) -> None:
        _a_inv, _b_inv = answered_call(h)
        h.take()
        [call] = h.core.calls.values()
        dialog = call.b_dialog
        assert dialog is not None
        bye = in_dialog("BYE", ruri=f"sip:{X}@127.0.0.1:5060",
                        from_=f"<sip:{B_NUM}@127.0.0.1:5090>;tag=tb1",
                        to=f"<sip:{X}@127.0.0.1>;tag={call.b_tag}", call_id=call.call.call_id,
                        cseq=1, via="SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKbb")
        h.deliver(bye, B_ADDR)
        [ok_b] = h.take(B_ADDR)
        assert isinstance(ok_b, Response) and ok_b.status == 200
        [bye_a] = h.take(A_ADDR)
        assert isinstance(bye_a, Request) and bye_a.method == "BYE"
        assert bye_a.uri == f"sip:{A_NUM}@192.0.2.10:5060"   # A's Contact
        assert bye_a.call_id == "acall-z9hG4bKa1@192.0.2.10"
        assert bye_a.from_.uri.user == X  # type: ignore[union-attr]
        no_identity(bye_a, B_NUM, "127.0.0.1:5090")

    h = run(flow)
    assert h.cdrs.records[0].release_side == "callee"


@pytest.mark.parametrize(("status", "cause"), [(486, "callee_failed"), (603, "callee_failed"),
                                               (302, "callee_failed")])
def test_callee_failure_status_passes_through(status: int, cause: str) -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        h.take(A_ADDR)
        [b_inv] = h.take(B_ADDR)
        assert isinstance(b_inv, Request)
        h.deliver(b_response(b_inv, status, extra="Warning: 399 x \"Li Si busy\"\r\n"),
                        B_ADDR)
        [ack] = h.take(B_ADDR)
        assert isinstance(ack, Request) and ack.method == "ACK"   # §17.1.1.3, by the txn
        [final] = h.take(A_ADDR)
        assert isinstance(final, Response) and final.status == status
        no_identity(final, B_NUM, "Li Si", "callee-pbx", "tb1")
        assert "contact" not in final.headers   # a 3xx target would leak the callee

    h = run(flow)
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause, cdr.release_side) == (status, cause, "callee")
    assert h.core.calls == {}


def test_unknown_x_is_404_and_stranger_is_403_with_cdrs() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(x="700100000000999", branch="z9hG4bKu"), A_ADDR)
        h.deliver(a_invite(caller=STRANGER, branch="z9hG4bKs"), A_ADDR)
        sent = [m for m in h.take(A_ADDR) if isinstance(m, Response) and m.status > 100]
        assert [m.status for m in sent] == [404, 403]
        assert h.take(B_ADDR) == []

    h = run(flow)
    causes = [(c.sip_status, c.unconnected_cause, c.binding_id is None) for c in h.cdrs.records]
    assert causes == [(404, "no_binding", True), (403, "not_allowed", True)]
    assert h.cdrs.records[0].tenant == "demo"   # X is in demo's pool, just not bound


def test_source_outside_every_trunk_acl_is_403() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), ("203.0.113.9", 5060))
        [final] = h.take()
        assert isinstance(final, Response) and final.status == 403

    h = run(flow)
    assert h.core.stats["refused_not_allowed"] == 1
    assert h.cdrs.records == []     # counted, not recorded (test_engine_security.py)


def test_caller_cancel_while_ringing() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        h.take(A_ADDR)
        [b_inv] = h.take(B_ADDR)
        assert isinstance(b_inv, Request)
        h.deliver(b_response(b_inv, 180), B_ADDR)
        h.take(A_ADDR)
        a_inv = parse_message(a_invite().encode())
        assert isinstance(a_inv, Request)
        h.deliver(a_cancel(a_inv), A_ADDR)
        to_a = [m for m in h.take(A_ADDR) if isinstance(m, Response)]
        assert sorted((m.status, m.cseq.method) for m in to_a) == [(200, "CANCEL"),
                                                                   (487, "INVITE")]
        [cancel_b] = h.take(B_ADDR)
        assert isinstance(cancel_b, Request) and cancel_b.method == "CANCEL"
        assert cancel_b.top_via.branch == b_inv.top_via.branch   # §9.1
        assert len(h.cdrs.records) == 1                          # before the 487 left
        h.deliver(b_response(cancel_b, 200), B_ADDR)
        h.deliver(b_response(b_inv, 487), B_ADDR)
        assert h.core.calls == {}

    h = run(flow)
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.release_side, cdr.answer_at) == (487, "caller", None)


def test_ring_timeout_cancels_leg_b_and_answers_408() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        [b_inv] = h.take(B_ADDR)
        assert isinstance(b_inv, Request)
        h.deliver(b_response(b_inv, 180), B_ADDR)
        h.take()
        h.advance(0.999)
        assert h.take() == []                               # not before the limit
        h.advance(0.001)
        finals = [m for m in h.take(A_ADDR) if isinstance(m, Response)]
        assert [m.status for m in finals] == [408]
        assert [m.method for m in h.take(B_ADDR) if isinstance(m, Request)] == ["CANCEL"]

    h = run(flow, ring_timeout_s=1)
    [cdr] = h.cdrs.records
    assert (cdr.sip_status, cdr.unconnected_cause, cdr.release_side) == (408, "timeout",
                                                                         "sipmask")


def test_refer_is_refused_and_reinvite_relayed_with_new_sdp() -> None:
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        [call] = h.core.calls.values()
        from_a = a_inv.headers.get("from") or ""
        to_a = f"<sip:{X}@127.0.0.1>;tag={call.a_tag}"
        refer = in_dialog("REFER", ruri=f"sip:{X}@127.0.0.1:5060", from_=from_a, to=to_a,
                          call_id=a_inv.call_id, cseq=11,
                          via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKref")
        h.deliver(refer, A_ADDR)
        [refused] = h.take(A_ADDR)
        assert isinstance(refused, Response) and refused.status == 403
        assert h.take(B_ADDR) == []
        body = A_SDP.replace(b"a=rtpmap:101", b"a=sendonly\r\na=rtpmap:101")
        reinvite = (in_dialog("INVITE", ruri=f"sip:{X}@127.0.0.1:5060", from_=from_a, to=to_a,
                              call_id=a_inv.call_id, cseq=12,
                              via="SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKre")
                    .replace("Content-Length: 0\r\n\r\n",
                             f"Content-Type: application/sdp\r\nContent-Length: {len(body)}"
                             f"\r\n\r\n{body.decode()}"))
        h.deliver(reinvite, A_ADDR)
        [re_b] = h.take(B_ADDR)
        assert isinstance(re_b, Request) and re_b.method == "INVITE"
        assert re_b.call_id == call.call.call_id and re_b.cseq.number == 2
        no_identity(re_b, A_NUM, "192.0.2.10", "16000")
        h.deliver(b_response(re_b, 200, sdp=B_SDP), B_ADDR)
        [ack_b] = h.take(B_ADDR)
        assert isinstance(ack_b, Request) and ack_b.method == "ACK"
        [ok_a] = h.take(A_ADDR)
        assert isinstance(ok_a, Response) and ok_a.status == 200
        assert ok_a.cseq.number == 12 and ok_a.to.tag == call.a_tag
        no_identity(ok_a, B_NUM, "198.51.100.7")
        assert ("offer", call.call.call_id, "a") in h.media.calls

    run(flow)
