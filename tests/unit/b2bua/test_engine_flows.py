"""Engine call flows found by the SIPp flow tests (tests/sipp/test_flows.py), pinned here
in the in-memory harness of test_engine.py: reliable provisionals on leg B and offers that
arrive in a 2xx (delayed offer)."""

from __future__ import annotations

from sipmask.sip.message import Request, Response
from tests.support.engine import (
    A_ADDR,
    A_SDP,
    B_ADDR,
    B_SDP,
    Harness,
    X,
    a_invite,
    answered_call,
    b_response,
    bind_axb,
    in_dialog,
    run,
)

RELIABLE_180 = "Require: 100rel\r\nRSeq: 1\r\n"


def test_reliable_provisional_retransmission_is_pracked_and_relayed_once() -> None:
    def flow(h: Harness) -> None:
        bind_axb(h)
        h.deliver(a_invite(), A_ADDR)
        h.take(A_ADDR)
        [b_inv] = h.take(B_ADDR)
        assert isinstance(b_inv, Request)
        for _ in range(3):   # B retransmits until it sees our PRACK (RFC 3262 §3)
            h.deliver(b_response(b_inv, 180, extra=RELIABLE_180), B_ADDR)
        pracks = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
        assert [(p.method, p.headers.get("rack")) for p in pracks] == [("PRACK", "1 1 INVITE")]
        relayed = h.take(A_ADDR)
        assert [r.status for r in relayed if isinstance(r, Response)] == [180]
        # The next reliable provisional (RSeq one higher) is PRACKed again.
        h.deliver(b_response(b_inv, 183, extra="Require: 100rel\r\nRSeq: 2\r\n"), B_ADDR)
        [prack2] = h.take(B_ADDR)
        assert isinstance(prack2, Request) and prack2.headers.get("rack") == "2 1 INVITE"

    run(flow)


def _a_request(h: Harness, a_inv: Request, method: str, cseq: int, body: bytes = b"",
               branch: str = "z9hG4bKre") -> str:
    [ctx] = h.core.calls.values()
    text = in_dialog(method, ruri=f"sip:{X}@127.0.0.1:5060", from_=a_inv.headers.get("from") or "",
                     to=f"<sip:{X}@127.0.0.1>;tag={ctx.a_tag}", call_id=a_inv.call_id,
                     cseq=cseq, via=f"SIP/2.0/UDP 192.0.2.10:5060;branch={branch}")
    if body:
        text = text.replace("Content-Length: 0\r\n\r\n",
                            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}"
                            f"\r\n\r\n{body.decode()}")
    return text


def test_reinvite_without_sdp_carries_a_answer_to_b_in_the_ack() -> None:
    """RFC 3261 §13.2.1 / RFC 3264: a re-INVITE without a body asks for an offer in the 2xx;
    the answer comes in the ACK, so leg B's ACK waits for A's and carries its SDP."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        h.deliver(_a_request(h, a_inv, "INVITE", 12), A_ADDR)
        [re_b] = h.take(B_ADDR)
        assert isinstance(re_b, Request) and re_b.body == b""
        h.deliver(b_response(re_b, 200, sdp=B_SDP), B_ADDR)
        assert [m for m in h.take(B_ADDR) if isinstance(m, Request)] == []   # not yet
        [ok_a] = h.take(A_ADDR)
        assert isinstance(ok_a, Response) and b"m=audio 30000" in ok_a.body
        h.deliver(_a_request(h, a_inv, "ACK", 12, body=A_SDP, branch="z9hG4bKack2"),
                        A_ADDR)
        [ack_b] = h.take(B_ADDR)
        assert isinstance(ack_b, Request) and ack_b.method == "ACK"
        assert ack_b.cseq.number == re_b.cseq.number
        assert b"m=audio 30002" in ack_b.body and b"192.0.2.10" not in ack_b.body
        assert ack_b.headers.get("content-type") == "application/sdp"

    run(flow)


def test_delayed_offer_invite_gets_the_relay_sdp_and_b_gets_the_answer_in_the_ack() -> None:
    """An INVITE without SDP (RFC 3264 §4 delayed offer): B's 200 carries the offer, which
    reaches A rewritten to the relay; A's answer comes in its ACK and crosses, rewritten,
    in our ACK to B (not in an empty ACK sent before A answered)."""
    def flow(h: Harness) -> None:
        bind_axb(h)
        invite = a_invite().replace("Content-Type: application/sdp\r\n", "")
        invite = invite[:invite.index("Content-Length:")] + "Content-Length: 0\r\n\r\n"
        h.deliver(invite, A_ADDR)
        h.take(A_ADDR)
        [b_inv] = h.take(B_ADDR)
        assert isinstance(b_inv, Request) and b_inv.body == b""
        h.deliver(b_response(b_inv, 200, sdp=B_SDP), B_ADDR)
        assert [m for m in h.take(B_ADDR) if isinstance(m, Request)] == []   # not yet
        [ok] = h.take(A_ADDR)
        assert isinstance(ok, Response) and ok.status == 200
        assert b"c=IN IP4 127.0.0.1" in ok.body and b"198.51.100.7" not in ok.body
        [ctx] = h.core.calls.values()
        a_inv = Request("INVITE", f"sip:{X}@127.0.0.1", ok.headers, b"")   # From/Call-ID
        ack = _a_request(h, a_inv, "ACK", 10, body=A_SDP, branch="z9hG4bKack1")
        h.deliver(ack, A_ADDR)
        [ack_b] = h.take(B_ADDR)
        assert isinstance(ack_b, Request) and ack_b.method == "ACK" and ack_b.cseq.number == 1
        assert b"m=audio 30002" in ack_b.body and b"192.0.2.10" not in ack_b.body
        assert ctx.call.state.value == "confirmed"

    run(flow)


def test_reinvite_2xx_retransmission_is_acked_again() -> None:
    """§13.2.2.4: the UAC core ACKs every 2xx retransmission; B retransmits its 200 to the
    relayed re-INVITE when our ACK was lost and, without one, ends the call (§13.3.1.4)."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        h.deliver(_a_request(h, a_inv, "INVITE", 12, body=A_SDP), A_ADDR)
        [re_b] = h.take(B_ADDR)
        assert isinstance(re_b, Request)
        for _ in range(2):
            h.deliver(b_response(re_b, 200, sdp=B_SDP), B_ADDR)
        acks = [m for m in h.take(B_ADDR) if isinstance(m, Request)]
        assert [(m.method, m.cseq.number) for m in acks] == [("ACK", re_b.cseq.number)] * 2
        assert [r.status for r in h.take(A_ADDR) if isinstance(r, Response)] == [200]

    run(flow)


def test_reinvite_pending_when_the_call_ends_gets_487() -> None:
    """§15.1.2: after a BYE the UAS must still answer requests pending in the dialog (487
    recommended); B hung up without answering the re-INVITE we relayed from A."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        h.deliver(_a_request(h, a_inv, "INVITE", 12, body=A_SDP), A_ADDR)
        [re_b] = h.take(B_ADDR)
        assert isinstance(re_b, Request)
        [ctx] = h.core.calls.values()
        bye = in_dialog("BYE", ruri=f"sip:{X}@127.0.0.1:5060", from_=re_b.headers.get("to") or "",
                        to=re_b.headers.get("from") or "", call_id=re_b.call_id, cseq=5,
                        via="SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKbyeb")
        h.deliver(bye, B_ADDR)
        bye_a = next(m for m in h.take(A_ADDR) if isinstance(m, Request))
        assert bye_a.method == "BYE"
        h.deliver(b_response(bye_a, 200).replace(
            "SIP/2.0 200 Whatever", "SIP/2.0 200 OK"), A_ADDR)
        assert ctx.call.state.value == "ended"
        finals = [(r.status, r.cseq.number) for r in h.take(A_ADDR) if isinstance(r, Response)]
        assert (487, 12) in finals

    run(flow)


def test_cancelled_reinvite_is_cancelled_on_the_other_leg() -> None:
    """§9.2: A cancels its re-INVITE; sipmask cancels the one it relayed to B, and B's 487
    comes back to A through the relay (the call itself goes on)."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        h.deliver(_a_request(h, a_inv, "INVITE", 12, body=A_SDP), A_ADDR)
        [re_b] = h.take(B_ADDR)
        assert isinstance(re_b, Request)
        h.deliver(_a_request(h, a_inv, "CANCEL", 12), A_ADDR)
        assert [r.status for r in h.take(A_ADDR) if isinstance(r, Response)] == [200]
        # §9.1: our CANCEL waits for B's provisional response.
        h.deliver(b_response(re_b, 100), B_ADDR)
        [cancel_b] = h.take(B_ADDR)
        assert isinstance(cancel_b, Request) and cancel_b.method == "CANCEL"
        assert cancel_b.cseq.number == re_b.cseq.number
        h.deliver(b_response(cancel_b, 200), B_ADDR)
        h.deliver(b_response(re_b, 487), B_ADDR)
        finals = [(r.status, r.cseq.number, r.cseq.method) for r in h.take(A_ADDR)
                  if isinstance(r, Response)]
        assert finals == [(487, 12, "INVITE")]
        [ctx] = h.core.calls.values()
        assert ctx.call.state.value == "confirmed"

    run(flow)


def test_second_reinvite_from_the_same_leg_gets_500_with_retry_after() -> None:
    """RFC 3261 §14.2: a UAS that gets a second INVITE while the first (lower CSeq) from the
    same UAC is unanswered returns 500 with Retry-After of 0-10 s; 491 is for glare, when
    an INVITE we sent towards that party is pending (test_flows' crossing re-INVITEs)."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        h.deliver(_a_request(h, a_inv, "INVITE", 12, body=A_SDP), A_ADDR)
        [re_b] = h.take(B_ADDR)
        assert isinstance(re_b, Request)
        h.deliver(_a_request(h, a_inv, "INVITE", 13, body=A_SDP, branch="z9hG4bKre13"),
                        A_ADDR)
        assert h.take(B_ADDR) == []                       # not relayed
        [refused] = [r for r in h.take(A_ADDR) if isinstance(r, Response)]
        assert (refused.status, refused.cseq.number) == (500, 13)
        assert 0 <= int(refused.headers.get("retry-after") or "-1") <= 10
        # B's own re-INVITE crossing ours (sent to B, pending) is glare: 491.
        [ctx] = h.core.calls.values()
        b_reinvite = in_dialog("INVITE", ruri=f"sip:{X}@127.0.0.1:5060",
                               from_=re_b.headers.get("to") or "",
                               to=re_b.headers.get("from") or "", call_id=re_b.call_id,
                               cseq=7, via="SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKbre")
        h.deliver(b_reinvite, B_ADDR)
        [glare] = [r for r in h.take(B_ADDR) if isinstance(r, Response)]
        assert glare.status == 491
        # The first re-INVITE still completes.
        h.deliver(b_response(re_b, 200, sdp=B_SDP), B_ADDR)
        assert [r.status for r in h.take(A_ADDR) if isinstance(r, Response)] == [200]
        assert ctx.call.state.value == "confirmed"

    run(flow)


def test_update_offers_crossing_or_repeated_are_refused() -> None:
    """RFC 3311 §5.2: an UPDATE offer while the same party's earlier offer is unanswered gets
    500 + Retry-After; one crossing our pending offer towards that party gets 491; an UPDATE
    without SDP (a session refresh) is relayed as usual."""
    def flow(h: Harness) -> None:
        a_inv, _b_inv = answered_call(h)
        h.take()
        h.deliver(_a_request(h, a_inv, "UPDATE", 12, body=A_SDP), A_ADDR)
        [up_b] = h.take(B_ADDR)
        assert isinstance(up_b, Request) and up_b.method == "UPDATE"
        h.deliver(_a_request(h, a_inv, "UPDATE", 13, body=A_SDP, branch="z9hG4bKup13"),
                        A_ADDR)
        assert h.take(B_ADDR) == []
        [again] = [r for r in h.take(A_ADDR) if isinstance(r, Response)]
        assert again.status == 500 and again.headers.get("retry-after") is not None
        b_update = in_dialog("UPDATE", ruri=f"sip:{X}@127.0.0.1:5060",
                             from_=up_b.headers.get("to") or "",
                             to=up_b.headers.get("from") or "", call_id=up_b.call_id,
                             cseq=7, via="SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKbup")
        crossing = b_update.replace("Content-Length: 0\r\n\r\n",
                                    f"Content-Type: application/sdp\r\n"
                                    f"Content-Length: {len(B_SDP)}\r\n\r\n{B_SDP.decode()}")
        h.deliver(crossing, B_ADDR)
        [glare] = [r for r in h.take(B_ADDR) if isinstance(r, Response)]
        assert glare.status == 491
        h.deliver(b_update.replace("CSeq: 7", "CSeq: 8").replace("z9hG4bKbup",
                                                                        "z9hG4bKbup8"), B_ADDR)
        relayed = [m for m in h.take(A_ADDR) if isinstance(m, Request)]
        assert [m.method for m in relayed] == ["UPDATE"]      # no offer: no glare
        h.deliver(b_response(up_b, 200, sdp=B_SDP), B_ADDR)
        assert [r.status for r in h.take(A_ADDR) if isinstance(r, Response)] == [200]

    run(flow)
