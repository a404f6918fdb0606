"""Client transactions (RFC 3261 §17.1, RFC 6026 §8.4) on a fake clock: time is a float.

Each test drives a TransactionLayer with `now` values, reads what it sends and what it tells
the TU, and ends with the gauges back at zero.
"""

from __future__ import annotations

import pytest

from sipmask.errors import TransactionError
from sipmask.sip.message import Request
from sipmask.sip.parser import parse_message
from sipmask.sip.timers import TimerConfig
from sipmask.sip.transaction import (
    CLIENT_INVITE,
    CLIENT_NON_INVITE,
    ClientInviteState,
    ClientNonInviteState,
    Input,
    ResponseReceived,
    StrayResponse,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimeout,
    TransportFailed,
    cancel_for,
)
from tests.support.txn_client import (
    PEER,
    assert_idle,
    kinds,
    layer,
    reply,
    request,
    run_timers,
    sent,
)


# -- Via ------------------------------------------------------------------------------------
def test_send_request_adds_a_top_via_with_a_fresh_branch_and_rport() -> None:
    tl = layer()
    req = request("OPTIONS")
    tl.send_request(req, PEER, "udp", 0.0)
    [out] = sent(tl)
    via = out.top_via
    assert via.branch is not None and via.branch.startswith("z9hG4bK")
    assert len(via.branch) > len("z9hG4bK") + 16
    assert (via.transport, via.host, via.port, via.rport) == ("UDP", "127.0.0.1", 5060, "")
    tcp = layer()
    tcp.send_request(request("OPTIONS"), PEER, "tcp", 0.0)
    assert sent(tcp)[0].top_via.transport == "TCP"


def test_send_request_keeps_the_callers_via_and_uses_its_branch() -> None:
    tl = layer()
    req = request("OPTIONS", via="SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKmine")
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    [out] = sent(tl)
    assert len(out.vias) == 1 and out.top_via.branch == "z9hG4bKmine"
    tl.receive(reply(req, 200), PEER, "udp", 0.1)
    [event, *_] = tl.events()
    assert isinstance(event, ResponseReceived) and event.txn_id == txn_id


def test_two_requests_get_different_branches_and_a_live_branch_cannot_be_reused() -> None:
    tl = layer()
    a, b = request("OPTIONS"), request("OPTIONS", cseq=2)
    tl.send_request(a, PEER, "udp", 0.0)
    tl.send_request(b, PEER, "udp", 0.0)
    assert a.top_via.branch != b.top_via.branch
    again = request("OPTIONS", via=str(a.top_via))
    with pytest.raises(TransactionError):
        tl.send_request(again, PEER, "udp", 0.0)


# -- client INVITE: Timers A, B --------------------------------------------------------------
def test_timer_a_doubles_from_t1_until_timer_b_at_64_t1() -> None:
    tl = layer()
    req = request()
    txn_id = tl.send_request(req, PEER, "udp", 100.0)
    first = tl.outgoing()
    assert [o.dest for o in first] == [PEER] and tl.state_of(txn_id) is ClientInviteState.CALLING
    log = run_timers(tl, 200.0)
    # §17.1.1.2: retransmits at T1, 2T1, 4T1, … after the last; Timer B at 64*T1 = 32 s.
    times = [round(at - 100.0, 6) for at, _ in log]
    assert times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 32.0]
    assert all(data == [first[0].data] for _, data in log[:-1])
    assert log[-1][1] == []
    events = tl.events()
    assert kinds(events) == ["TransactionTimeout", "TransactionTerminated"]
    assert isinstance(events[0], TransactionTimeout) and events[0].request is req
    assert_idle(tl)


def test_timer_a_schedule_follows_t1_from_config() -> None:
    tl = TransactionLayer(TimerConfig.from_ms(100, 4000, 5000), local_via_host="127.0.0.1",
                          local_port=5060)
    tl.send_request(request(), PEER, "udp", 0.0)
    tl.outgoing()
    times = [round(at, 6) for at, _ in run_timers(tl, 100.0)]
    assert times == [0.1, 0.3, 0.7, 1.5, 3.1, 6.3, 6.4]  # B = 64 * 0.1


def test_invite_over_tcp_is_not_retransmitted_but_still_times_out() -> None:
    tl = layer()
    tl.send_request(request(), PEER, "tcp", 0.0)
    assert len(tl.outgoing()) == 1
    log = run_timers(tl, 100.0)
    assert [(at, data) for at, data in log] == [(32.0, [])]
    assert kinds(tl.events()) == ["TransactionTimeout", "TransactionTerminated"]
    assert_idle(tl)


def test_a_late_timer_call_fires_every_due_timer_on_its_own_schedule() -> None:
    tl = layer()
    tl.send_request(request(), PEER, "udp", 0.0)
    tl.outgoing()
    tl.handle_timer(3.6)  # the loop was busy: A at 0.5, 1.5 and 3.5 are all due
    assert len(tl.outgoing()) == 3
    assert tl.next_timer() == pytest.approx(7.5)


def test_provisional_response_stops_retransmissions_and_timer_b() -> None:
    tl = layer()
    req = request()
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    tl.receive(reply(req, 100), PEER, "udp", 0.2)
    tl.receive(reply(req, 180), PEER, "udp", 0.3)
    assert tl.state_of(txn_id) is ClientInviteState.PROCEEDING
    assert tl.next_timer() is None and tl.outgoing() == []
    events = tl.events()
    assert [e.response.status for e in events if isinstance(e, ResponseReceived)] == [100, 180]
    # The call is ended by its final response (here a 486) whenever it comes.
    tl.receive(reply(req, 486), PEER, "udp", 50.0)
    assert tl.state_of(txn_id) is ClientInviteState.COMPLETED


# -- client INVITE: non-2xx final, ACK, Timer D ------------------------------------------------
def test_non_2xx_final_is_acked_inside_the_transaction() -> None:
    tl = layer()
    req = request()
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    tl.receive(reply(req, 180), PEER, "udp", 0.1)
    tl.receive(reply(req, 486), PEER, "udp", 0.2)
    [ack] = sent(tl)
    assert isinstance(ack, Request) and ack.method == "ACK"
    # §17.1.1.3: same Request-URI, Call-ID, From, CSeq number, the INVITE's top Via (same
    # branch), To from the response, the INVITE's Route.
    assert ack.uri == req.uri and ack.call_id == req.call_id
    assert ack.headers.get("from") == req.headers.get("from")
    assert ack.cseq.number == 1 and ack.cseq.method == "ACK"
    assert [str(v) for v in ack.vias] == [str(req.top_via)]
    assert ack.to.tag == "theirs"
    assert ack.headers.get_all("route") == ["<sip:127.0.0.9;lr>"]
    assert ack.body == b""
    events = tl.events()
    assert [e.response.status for e in events if isinstance(e, ResponseReceived)] == [180, 486]
    assert all(isinstance(e, ResponseReceived) and e.txn_id == txn_id for e in events)


def test_timer_d_absorbs_retransmitted_final_responses_by_acking_again() -> None:
    tl = layer()
    req = request()
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    tl.receive(reply(req, 486), PEER, "udp", 0.2)
    first_ack = tl.outgoing()
    tl.events()
    for at in (0.7, 1.7, 3.7):
        tl.receive(reply(req, 486), PEER, "udp", at)
        assert tl.outgoing() == first_ack  # the very same ACK again
        assert tl.events() == []           # the TU saw the 486 once
    tl.receive(reply(req, 180), PEER, "udp", 4.0)
    tl.receive(reply(req, 200), PEER, "udp", 4.0)
    assert tl.outgoing() == [] and tl.events() == []
    assert tl.state_of(txn_id) is ClientInviteState.COMPLETED
    # §17.1.1.2: Timer D is at least 32 s on UDP, counted from the final response.
    assert tl.next_timer() == pytest.approx(32.2)
    tl.handle_timer(32.1)
    assert tl.state_of(txn_id) is ClientInviteState.COMPLETED
    tl.handle_timer(32.2)
    assert kinds(tl.events()) == ["TransactionTerminated"]
    # After Timer D a late retransmission no longer matches: it is a stray for the TU.
    tl.receive(reply(req, 486), PEER, "udp", 40.0)
    assert kinds(tl.events()) == ["StrayResponse"]
    assert_idle(tl)


def test_timer_d_is_zero_on_tcp() -> None:
    tl = layer()
    req = request()
    tl.send_request(req, PEER, "tcp", 0.0)
    tl.outgoing()
    tl.receive(reply(req, 503), PEER, "tcp", 0.2)
    assert [m.method for m in sent(tl) if isinstance(m, Request)] == ["ACK"]
    assert kinds(tl.events()) == ["ResponseReceived", "TransactionTerminated"]
    assert_idle(tl)


# -- client INVITE: 2xx and Accepted (RFC 6026) ---------------------------------------------
def test_2xx_moves_to_accepted_and_retransmitted_2xx_reach_the_tu_until_timer_m() -> None:
    tl = layer()
    req = request()
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    tl.receive(reply(req, 200), PEER, "udp", 1.0)
    assert tl.state_of(txn_id) is ClientInviteState.ACCEPTED
    assert tl.outgoing() == []  # §17.1.1.3: the ACK for a 2xx is the TU's
    assert kinds(tl.events()) == ["ResponseReceived"]
    tl.receive(reply(req, 200), PEER, "udp", 1.5)
    assert kinds(tl.events()) == ["ResponseReceived"]  # no ACK from the TU yet: deliver
    # RFC 6026 §8.4: Timer M = 64*T1.
    assert tl.next_timer() == pytest.approx(33.0)
    tl.handle_timer(33.0)
    assert kinds(tl.events()) == ["TransactionTerminated"]
    # §17.1.1.2: the TU gets 2xx even with no transaction left.
    tl.receive(reply(req, 200), PEER, "udp", 40.0)
    [stray] = tl.events()
    assert isinstance(stray, StrayResponse) and stray.response.status == 200
    assert stray.source == PEER
    assert_idle(tl)


def test_the_tus_ack_is_sent_again_for_each_retransmitted_2xx() -> None:
    tl = layer()
    req = request()
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    ok = reply(req, 200)
    tl.receive(ok, PEER, "udp", 1.0)
    tl.events()
    ack = request("ACK")
    ack.headers.set("To", ok.headers.get("to") or "")
    tl.send_ack(txn_id, ack, ("127.0.0.1", 5091), "udp")
    [first] = tl.outgoing()
    first_ack = parse_message(first.data)
    assert first.dest == ("127.0.0.1", 5091)
    assert first_ack.top_via.branch != req.top_via.branch  # §17.1.1.3: a new branch
    tl.receive(reply(req, 200), PEER, "udp", 1.5)
    assert tl.outgoing() == [first] and tl.events() == []
    # A 2xx with another To tag (a forked answer) is news for the TU.
    tl.receive(reply(req, 200, tag="fork2"), PEER, "udp", 1.6)
    assert kinds(tl.events()) == ["ResponseReceived"] and tl.outgoing() == []


def test_send_ack_refuses_other_methods() -> None:
    tl = layer()
    with pytest.raises(TransactionError):
        tl.send_ack(None, request("BYE"), PEER, "udp")
    with pytest.raises(TransactionError):
        tl.send_request(request("ACK"), PEER, "udp", 0.0)


# -- client non-INVITE: Timers E, F, K -------------------------------------------------------
def test_timer_e_doubles_to_t2_until_timer_f() -> None:
    tl = layer()
    req = request("OPTIONS")
    tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    log = run_timers(tl, 100.0)
    times = [round(at, 6) for at, _ in log]
    # §17.1.2.2: 0.5, 1, 2, 4, 4, 4 … between sends; Timer F at 64*T1 = 32 s.
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5, 32.0]
    assert all(len(data) == 1 for _, data in log[:-1]) and log[-1][1] == []
    assert kinds(tl.events()) == ["TransactionTimeout", "TransactionTerminated"]
    assert_idle(tl)


def test_timer_e_is_t2_in_proceeding() -> None:
    tl = layer()
    req = request("BYE")
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    tl.receive(reply(req, 100), PEER, "udp", 0.2)
    assert tl.state_of(txn_id) is ClientNonInviteState.PROCEEDING
    times = [round(at, 6) for at, _ in run_timers(tl, 100.0)]
    # The pending E fires at 0.5, then §17.1.2.2 resets it to T2 each time.
    assert times == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.0]
    assert kinds(tl.events()) == ["ResponseReceived", "TransactionTimeout",
                                  "TransactionTerminated"]


def test_timer_k_absorbs_retransmitted_responses_for_t4() -> None:
    tl = layer()
    req = request("BYE")
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    tl.receive(reply(req, 200), PEER, "udp", 0.1)
    assert tl.state_of(txn_id) is ClientNonInviteState.COMPLETED
    tl.receive(reply(req, 200), PEER, "udp", 0.6)
    tl.receive(reply(req, 100), PEER, "udp", 0.7)
    assert kinds(tl.events()) == ["ResponseReceived"]
    assert tl.outgoing() == []
    assert tl.next_timer() == pytest.approx(5.1)  # §17.1.2.2: K = T4
    tl.handle_timer(5.1)
    assert kinds(tl.events()) == ["TransactionTerminated"]
    assert_idle(tl)


def test_non_invite_over_tcp_has_no_retransmissions_and_k_is_zero() -> None:
    tl = layer()
    req = request("BYE")
    tl.send_request(req, PEER, "tcp", 0.0)
    assert len(tl.outgoing()) == 1
    assert tl.next_timer() == pytest.approx(32.0)  # only F
    tl.receive(reply(req, 200), PEER, "tcp", 0.1)
    assert kinds(tl.events()) == ["ResponseReceived", "TransactionTerminated"]
    assert_idle(tl)


# -- matching (§17.1.3) -----------------------------------------------------------------------
def test_a_response_matches_on_branch_and_cseq_method_only() -> None:
    tl = layer()
    req = request()
    tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    # Same branch, other method (a response to a CANCEL we never sent): not this one.
    tl.receive(reply(req, 200, method="CANCEL"), PEER, "udp", 0.1)
    # Other branch.
    other = reply(req, 180)
    other.headers.set("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnot-ours")
    tl.receive(other, PEER, "udp", 0.1)
    assert kinds(tl.events()) == ["StrayResponse", "StrayResponse"]
    tl.receive(reply(req, 180), PEER, "udp", 0.1)
    assert kinds(tl.events()) == ["ResponseReceived"]


def test_a_response_without_usable_via_is_dropped_quietly() -> None:
    tl = layer()
    req = request("OPTIONS")
    tl.send_request(req, PEER, "udp", 0.0)
    bad = reply(req, 200)
    bad.headers.remove("via")
    tl.receive(bad, PEER, "udp", 0.1)
    assert tl.events() == []


# -- CANCEL (§9.1) ---------------------------------------------------------------------------
def test_cancel_waits_for_a_provisional_response_then_shares_the_invite_branch() -> None:
    tl = layer()
    req = request()
    invite_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    cancel_id = tl.cancel(invite_id, 0.1)
    assert cancel_id is not None
    assert tl.outgoing() == []  # §9.1: MUST NOT be sent before a provisional response
    tl.receive(reply(req, 180), PEER, "udp", 0.3)
    [cancel] = sent(tl)
    assert isinstance(cancel, Request) and cancel.method == "CANCEL"
    assert cancel.uri == req.uri and cancel.cseq.number == 1 and cancel.cseq.method == "CANCEL"
    assert [str(v) for v in cancel.vias] == [str(req.top_via)]
    assert cancel.headers.get("to") == req.headers.get("to")
    assert cancel.headers.get_all("route") == req.headers.get_all("route")
    assert tl.cancel(invite_id, 0.35) == cancel_id and tl.outgoing() == []  # once only
    # The CANCEL is a non-INVITE client transaction of its own: Timer E runs for it.
    assert tl.next_timer() == pytest.approx(0.8)
    tl.receive(reply(cancel, 200), PEER, "udp", 0.4)
    tl.receive(reply(req, 487), PEER, "udp", 0.5)
    acks = sent(tl)
    assert [m.method for m in acks if isinstance(m, Request)] == ["ACK"]
    events = tl.events()
    statuses = [(e.txn_id, e.response.status) for e in events if isinstance(e, ResponseReceived)]
    assert statuses == [(invite_id, 180), (cancel_id, 200), (invite_id, 487)]
    run_timers(tl, 100.0)
    assert_idle(tl)


def test_cancel_sent_at_once_in_proceeding() -> None:
    tl = layer()
    req = request()
    invite_id = tl.send_request(req, PEER, "tcp", 0.0)
    tl.receive(reply(req, 183), PEER, "tcp", 0.1)
    tl.outgoing()
    assert tl.cancel(invite_id, 0.2) is not None
    assert [m.method for m in sent(tl) if isinstance(m, Request)] == ["CANCEL"]


def test_a_held_cancel_is_dropped_when_the_final_response_comes_first() -> None:
    tl = layer()
    req = request()
    invite_id = tl.send_request(req, PEER, "udp", 0.0)
    tl.outgoing()
    cancel_id = tl.cancel(invite_id, 0.1)
    tl.receive(reply(req, 200), PEER, "udp", 0.2)
    events = tl.events()
    assert TransactionTerminated(cancel_id or "") in events
    assert tl.outgoing() == []
    assert tl.cancel(invite_id, 0.3) is None  # §9.1: a final response: nothing to cancel


def test_cancel_of_a_non_invite_or_an_unknown_transaction_raises() -> None:
    tl = layer()
    bye_id = tl.send_request(request("BYE"), PEER, "udp", 0.0)
    with pytest.raises(TransactionError):
        tl.cancel(bye_id, 0.1)
    with pytest.raises(TransactionError):
        tl.cancel("c|z9hG4bKnope|INVITE", 0.1)


# -- TU misuse and transport errors ------------------------------------------------------------
def test_send_response_on_a_client_transaction_raises() -> None:
    tl = layer()
    req = request("OPTIONS")
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    with pytest.raises(TransactionError):
        tl.send_response(txn_id, reply(req, 200), 0.1)
    with pytest.raises(TransactionError):
        tl.send_response("s|nope", reply(req, 200), 0.1)


def test_transport_error_fails_the_transactions_to_that_destination() -> None:
    tl = layer()
    a = tl.send_request(request(), PEER, "udp", 0.0)
    b = tl.send_request(request("OPTIONS"), ("127.0.0.1", 5999), "udp", 0.0)
    tl.outgoing()
    tl.transport_error(PEER, "udp", 0.1)
    events = tl.events()
    assert kinds(events) == ["TransportFailed", "TransactionTerminated"]
    assert isinstance(events[0], TransportFailed) and events[0].txn_id == a
    assert events[0].request.method == "INVITE"
    assert tl.state_of(b) is ClientNonInviteState.TRYING


# -- the tables -----------------------------------------------------------------------------
@pytest.mark.parametrize(("table", "states"), [
    (CLIENT_INVITE, [s for s in ClientInviteState if s is not ClientInviteState.TERMINATED]),
    (CLIENT_NON_INVITE,
     [s for s in ClientNonInviteState if s is not ClientNonInviteState.TERMINATED]),
])
def test_every_network_input_is_in_the_table_for_every_live_state(table, states) -> None:  # type: ignore[no-untyped-def]
    # A peer must never make the layer raise: each response class and a transport error
    # has a row in every state that is not Terminated.
    for state in states:
        for event in (Input.PROVISIONAL, Input.SUCCESS, Input.FAILURE, Input.TRANSPORT_ERROR):
            assert (state, event) in table, (state, event)


def test_an_event_missing_from_the_table_raises_transaction_error() -> None:
    tl = layer()
    req = request("BYE")
    txn_id = tl.send_request(req, PEER, "udp", 0.0)
    # The TU cannot cancel a BYE: no (Trying, CANCEL) row.
    assert (ClientNonInviteState.TRYING, Input.CANCEL) not in CLIENT_NON_INVITE
    with pytest.raises(TransactionError, match="cannot take cancel"):
        tl._feed(tl._txns[txn_id], Input.CANCEL, _ctx())


def _ctx():  # type: ignore[no-untyped-def]
    from sipmask.sip.transaction import _Context
    return _Context(0.0)



def test_an_invite_with_no_final_response_64_t1_after_cancel_is_given_up() -> None:
    tl = layer()
    req = request()
    invite_id = tl.send_request(req, PEER, "tcp", 0.0)
    tl.receive(reply(req, 180), PEER, "tcp", 1.0)
    cancel_id = tl.cancel(invite_id, 10.0)
    tl.outgoing()
    assert cancel_id is not None
    tl.receive(reply(cancel_for(req), 200), PEER, "tcp", 10.1)
    tl.events()
    # §9.1: the callee never sends 487; 64*T1 after the CANCEL the INVITE is destroyed.
    assert tl.next_timer() == pytest.approx(42.0)
    tl.handle_timer(41.9)
    assert tl.state_of(invite_id) is ClientInviteState.PROCEEDING
    tl.handle_timer(42.0)
    events = tl.events()
    assert kinds(events) == ["TransactionTimeout", "TransactionTerminated"]
    assert isinstance(events[0], TransactionTimeout) and events[0].txn_id == invite_id
    assert_idle(tl)


def test_a_final_response_after_cancel_stops_the_give_up_timer() -> None:
    tl = layer()
    req = request()
    invite_id = tl.send_request(req, PEER, "tcp", 0.0)
    tl.receive(reply(req, 180), PEER, "tcp", 1.0)
    tl.cancel(invite_id, 10.0)
    tl.receive(reply(cancel_for(req), 200), PEER, "tcp", 10.1)
    tl.receive(reply(req, 487), PEER, "tcp", 10.2)
    assert tl.next_timer() is None
    assert_idle(tl)

