"""Server transactions (RFC 3261 §17.2, RFC 6026 §8.5–§8.7, RFC 3581) on a fake clock.

Requests arrive as the peer's bytes; the TU answers with `build_response`; each test reads
what went out, where to, and what the TU was told, and ends with the gauges at zero.
"""

from __future__ import annotations

import pytest

from sipmask.errors import TransactionError
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from sipmask.sip.transaction import (
    SERVER_INVITE,
    SERVER_NON_INVITE,
    AckReceived,
    AckTimeout,
    CancelReceived,
    Input,
    RequestReceived,
    ServerInviteState,
    ServerNonInviteState,
    TransactionTimeout,
    server_key,
    stamp_top_via,
)
from tests.support.txn_server import (
    PEER,
    answer,
    assert_idle,
    incoming,
    kinds,
    layer,
    receive,
    run_timers,
    start,
    statuses,
)


# -- 100 Trying (§17.2.1) -----------------------------------------------------------------------
def test_100_trying_is_sent_after_200_ms_when_the_tu_is_silent() -> None:
    tl = layer()
    event = start(tl, incoming())
    assert tl.outgoing() == []
    assert tl.next_timer() == pytest.approx(0.2)
    tl.handle_timer(0.2)
    [out] = tl.outgoing()
    trying = parse_message(out.data)
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.to.tag is None  # §8.2.6.2: no tag on 100
    assert tl.state_of(event.txn_id) is ServerInviteState.PROCEEDING


def test_no_100_when_the_tu_answers_within_200_ms() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 180), 0.05)
    assert statuses(tl) == [180]
    tl.handle_timer(1.0)
    assert statuses(tl) == []


def test_100_is_the_tus_job_when_trying_delay_is_none() -> None:
    tl = layer(trying_delay=None)
    start(tl, incoming())
    assert tl.next_timer() is None
    tl.handle_timer(5.0)
    assert tl.outgoing() == []


def test_100_echoes_timestamp() -> None:
    tl = layer()
    start(tl, incoming(extra="Timestamp: 54.2\r\n"))
    tl.handle_timer(0.2)
    [out] = tl.outgoing()
    assert parse_message(out.data).headers.get("timestamp") == "54.2"


# -- retransmission absorption ---------------------------------------------------------------
def test_retransmitted_invite_gets_100_at_once_then_the_last_provisional() -> None:
    tl = layer()
    event = start(tl, incoming())
    assert receive(tl, incoming(), 0.1) == []  # absorbed: no second RequestReceived
    assert statuses(tl) == [100]
    tl.handle_timer(0.3)
    assert statuses(tl) == []  # the 100 timer was stopped
    tl.send_response(event.txn_id, answer(event.request, 180), 0.4)
    assert statuses(tl) == [180]
    assert receive(tl, incoming(), 0.5) == []
    assert statuses(tl) == [180]


def test_retransmitted_non_invite_gets_nothing_then_the_last_response() -> None:
    tl = layer()
    req = incoming("OPTIONS")
    event = start(tl, req)
    assert receive(tl, incoming("OPTIONS"), 0.1) == [] and tl.outgoing() == []  # Trying
    tl.send_response(event.txn_id, answer(req, 100), 0.2)
    assert statuses(tl) == [100]
    receive(tl, incoming("OPTIONS"), 0.3)
    assert statuses(tl) == [100]  # Proceeding: the last provisional
    tl.send_response(event.txn_id, answer(req, 200), 0.4)
    assert statuses(tl) == [200]
    assert tl.state_of(event.txn_id) is ServerNonInviteState.COMPLETED
    for at in (0.9, 1.9):
        assert receive(tl, incoming("OPTIONS"), at) == []
        assert statuses(tl) == [200]  # Completed: the final again


def test_timer_j_keeps_a_non_invite_transaction_64_t1_on_udp_and_not_at_all_on_tcp() -> None:
    tl = layer()
    req = incoming("BYE")
    event = start(tl, req, 10.0)
    tl.send_response(event.txn_id, answer(req, 200), 10.0)
    tl.outgoing()
    assert tl.next_timer() == pytest.approx(42.0)  # §17.2.2: J = 64*T1
    tl.handle_timer(42.0)
    assert kinds(tl.events()) == ["TransactionTerminated"]
    assert_idle(tl)
    event = start(tl, incoming("BYE"), 50.0, transport="tcp")
    tl.send_response(event.txn_id, answer(req, 200), 50.0)
    assert kinds(tl.events()) == ["TransactionTerminated"]
    assert_idle(tl)


# -- server INVITE: non-2xx, Timers G, H, I ------------------------------------------------------
def test_timer_g_retransmits_the_final_response_doubling_to_t2_until_timer_h() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 486), 0.0)
    assert statuses(tl) == [486]
    assert tl.state_of(event.txn_id) is ServerInviteState.COMPLETED
    log = run_timers(tl, 100.0)
    # §17.2.1: G at T1, doubling, capped at T2; H at 64*T1 = 32 s.
    assert [at for at, _ in log] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
                                     32.0]
    assert all(sent == [486] for _, sent in log[:-1]) and log[-1][1] == []
    events = tl.events()
    assert kinds(events) == ["TransactionTimeout", "TransactionTerminated"]
    assert isinstance(events[0], TransactionTimeout) and events[0].txn_id == event.txn_id
    assert_idle(tl)


def test_retransmitted_invite_in_completed_gets_the_final_again() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 404), 0.0)
    tl.outgoing()
    assert receive(tl, incoming(), 0.2) == []
    assert statuses(tl) == [404]


def test_ack_stops_timer_g_and_timer_i_absorbs_ack_retransmissions() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 486), 0.0)
    tl.handle_timer(0.5)
    tl.outgoing()
    ack = incoming("ACK", to_tag="b2b")
    assert receive(tl, ack, 0.7) == []  # §17.2.1: the non-2xx ACK ends here, not at the TU
    assert tl.state_of(event.txn_id) is ServerInviteState.CONFIRMED
    assert tl.next_timer() == pytest.approx(5.7)  # I = T4 from the ACK
    assert receive(tl, incoming("ACK", to_tag="b2b"), 1.0) == []
    assert receive(tl, incoming(), 1.1) == []  # INVITE retransmissions too
    assert tl.outgoing() == []
    tl.handle_timer(5.7)
    assert kinds(tl.events()) == ["TransactionTerminated"]
    assert_idle(tl)


def test_on_tcp_there_is_no_timer_g_and_i_is_zero() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req, transport="tcp")
    tl.send_response(event.txn_id, answer(req, 603), 0.0)
    assert statuses(tl) == [603]
    assert tl.next_timer() == pytest.approx(32.0)  # only H
    receive(tl, incoming("ACK", to_tag="b2b"), 0.1, transport="tcp")
    assert kinds(tl.events()) == []
    assert_idle(tl)


# -- server INVITE: 2xx and Accepted (RFC 6026) ---------------------------------------------
def test_2xx_is_retransmitted_until_the_ack_for_it_arrives() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 200), 0.0)
    assert statuses(tl) == [200]
    assert tl.state_of(event.txn_id) is ServerInviteState.ACCEPTED
    log = run_timers(tl, 8.0)
    # §13.3.1.4: T1, doubling to T2.
    assert log == [(0.5, [200]), (1.5, [200]), (3.5, [200]), (7.5, [200])]
    assert receive(tl, incoming(), 8.0) == []  # RFC 6026 §8.7: INVITE absorbed
    assert tl.outgoing() == []
    # The ACK for a 2xx has a branch of its own (§17.1.1.3) and is the TU's.
    ack = incoming("ACK", branch="z9hG4bKack", to_tag="b2b")
    [got] = receive(tl, ack, 9.0)
    assert got == AckReceived(ack, PEER, "udp", event.txn_id)
    assert run_timers(tl, 31.9) == []  # no more 2xx
    tl.handle_timer(32.0)  # Timer L = 64*T1 from the 2xx
    assert kinds(tl.events()) == ["TransactionTerminated"]  # ACKed: no AckTimeout
    assert_idle(tl)


def test_no_ack_for_64_t1_is_an_ack_timeout() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    ok = answer(req, 200)
    tl.send_response(event.txn_id, ok, 0.0)
    log = run_timers(tl, 100.0)
    assert [at for at, _ in log] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5,
                                     32.0]
    events = tl.events()
    assert kinds(events) == ["AckTimeout", "TransactionTerminated"]
    assert events[0] == AckTimeout(event.txn_id, ok)
    assert_idle(tl)


def test_an_ack_with_the_invites_branch_in_accepted_goes_to_the_tu() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 200), 0.0)
    [got] = receive(tl, incoming("ACK", to_tag="b2b"), 0.2)
    assert isinstance(got, AckReceived) and got.invite_txn_id == event.txn_id
    assert run_timers(tl, 31.0) == []  # the 2xx is no longer retransmitted


def test_an_ack_for_no_known_2xx_still_reaches_the_tu() -> None:
    tl = layer()
    ack = incoming("ACK", branch="z9hG4bKlost", to_tag="gone")
    [got] = receive(tl, ack, 0.0)
    assert got == AckReceived(ack, PEER, "udp", None)
    assert_idle(tl)


def test_the_tu_may_resend_2xx_in_accepted_but_not_a_failure() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 200), 0.0)
    tl.send_response(event.txn_id, answer(req, 200), 0.1)
    assert statuses(tl) == [200, 200]
    with pytest.raises(TransactionError):
        tl.send_response(event.txn_id, answer(req, 500), 0.2)
    with pytest.raises(TransactionError):
        tl.send_response(event.txn_id, answer(req, 180), 0.2)


# -- illegal TU events ----------------------------------------------------------------------
def test_a_second_final_response_raises() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 486), 0.0)
    for status in (180, 200, 486):
        with pytest.raises(TransactionError, match="completed"):
            tl.send_response(event.txn_id, answer(req, status), 0.1)
    opt = incoming("OPTIONS", branch="z9hG4bKo")
    opt_event = start(tl, opt)
    tl.send_response(opt_event.txn_id, answer(opt, 200), 0.0)
    with pytest.raises(TransactionError):
        tl.send_response(opt_event.txn_id, answer(opt, 100), 0.1)


@pytest.mark.parametrize(("table", "states", "inputs"), [
    (SERVER_INVITE, [s for s in ServerInviteState if s is not ServerInviteState.TERMINATED],
     (Input.REQUEST, Input.ACK, Input.TRANSPORT_ERROR)),
    (SERVER_NON_INVITE,
     [s for s in ServerNonInviteState if s is not ServerNonInviteState.TERMINATED],
     (Input.REQUEST, Input.TRANSPORT_ERROR)),
])
def test_every_network_input_is_in_the_table_for_every_live_state(  # type: ignore[no-untyped-def]
        table, states, inputs) -> None:
    for state in states:
        for event in inputs:
            assert (state, event) in table, (state, event)


# -- matching (§17.2.3) ---------------------------------------------------------------------
def test_matching_uses_branch_sent_by_and_method() -> None:
    tl = layer(trying_delay=None)
    first = start(tl, incoming())
    # Same branch from another sent-by: another transaction.
    other_host = start(tl, incoming(sent_by="127.0.0.2:5070"))
    # Same branch and sent-by, other method: another transaction.
    other_method = start(tl, incoming("OPTIONS"))
    ids = {first.txn_id, other_host.txn_id, other_method.txn_id}
    assert len(ids) == 3
    assert tl.gauges() == {"invite_client": 0, "non_invite_client": 0, "invite_server": 2,
                           "non_invite_server": 1}
    # The sent-by port defaults to 5060 (§18.2.1): `host` and `host:5060` are one sender.
    a = server_key(incoming(sent_by="127.0.0.3"))
    assert a == server_key(incoming(sent_by="127.0.0.3:5060"))
    assert server_key(incoming("ACK")) == server_key(incoming())


def test_rfc2543_requests_without_the_magic_cookie_still_match_their_retransmissions() -> None:
    tl = layer()
    req = incoming(branch="old-style-1")
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 486), 0.0)
    tl.outgoing()
    assert receive(tl, incoming(branch="old-style-1"), 0.3) == []
    assert statuses(tl) == [486]
    receive(tl, incoming("ACK", branch="old-style-1", to_tag="b2b"), 0.4)
    assert tl.state_of(event.txn_id) is ServerInviteState.CONFIRMED
    # Another CSeq is another transaction.
    assert kinds(receive(tl, incoming(branch="old-style-1", cseq=2), 0.5)) == [
        "RequestReceived"]


# -- CANCEL (§9.2) -----------------------------------------------------------------------------
def test_cancel_is_answered_200_with_the_invites_to_tag_and_the_tu_answers_487() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 180, tag="t180"), 0.0)
    tl.outgoing()
    cancel = incoming("CANCEL")
    [got] = receive(tl, cancel, 1.0)
    assert isinstance(got, CancelReceived) and got.invite_txn_id == event.txn_id
    [out] = tl.outgoing()
    ok = parse_message(out.data)
    assert isinstance(ok, Response) and ok.status == 200 and ok.cseq.method == "CANCEL"
    assert ok.to.tag == "t180"  # §9.2: the same To tag as the INVITE's responses
    # A retransmitted CANCEL gets the 200 again, and is not news for the TU.
    assert receive(tl, incoming("CANCEL"), 1.2) == []
    assert statuses(tl) == [200]
    tl.send_response(event.txn_id, answer(req, 487, tag="t180"), 1.0)
    receive(tl, incoming("ACK", to_tag="t180"), 1.1)
    run_timers(tl, 100.0)
    assert_idle(tl)


def test_cancel_without_an_invite_is_481_and_after_the_final_response_needs_nothing() -> None:
    tl = layer()
    [got] = receive(tl, incoming("CANCEL", branch="z9hG4bKnone"), 0.0)
    assert isinstance(got, CancelReceived) and got.invite_txn_id is None
    assert statuses(tl) == [481]
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 200), 0.0)
    tl.outgoing()
    [late] = receive(tl, incoming("CANCEL"), 0.1)
    assert isinstance(late, CancelReceived) and late.invite_txn_id is None
    assert statuses(tl) == [200]  # §9.2: matched, so 200, but the call stands


def test_a_tu_cannot_answer_the_cancel_the_layer_answered() -> None:
    tl = layer()
    [got] = receive(tl, incoming("CANCEL", branch="z9hG4bKnone"), 0.0)
    assert isinstance(got, CancelReceived)
    with pytest.raises(TransactionError):
        tl.send_response(got.txn_id, answer(got.request, 200), 0.1)


# -- received / rport (RFC 3581 §4) and where responses go ---------------------------------------
def test_responses_go_to_the_real_source_with_received_and_rport_stamped() -> None:
    tl2 = layer()
    req2 = incoming(sent_by="10.9.9.9:5070")  # behind a NAT: the packet came from elsewhere
    tl2.receive(req2, ("127.0.0.5", 40000), "udp", 0.0)
    [ev] = tl2.events()
    assert isinstance(ev, RequestReceived)
    via = ev.request.top_via
    assert (via.received, via.rport) == ("127.0.0.5", "40000")
    tl2.send_response(ev.txn_id, answer(req2, 486), 0.0)
    [out] = tl2.outgoing()
    assert out.dest == ("127.0.0.5", 40000)
    sent = parse_message(out.data)
    assert (sent.top_via.received, sent.top_via.rport) == ("127.0.0.5", "40000")


def test_without_rport_the_response_goes_to_received_and_the_via_port() -> None:
    tl = layer()
    req = incoming(sent_by="10.9.9.9:5072", via_params="")
    tl.receive(req, ("127.0.0.5", 40000), "udp", 0.0)
    [ev] = tl.events()
    assert isinstance(ev, RequestReceived)
    tl.send_response(ev.txn_id, answer(req, 404), 0.0)
    [out] = tl.outgoing()
    assert out.dest == ("127.0.0.5", 5072)  # §18.2.2: received, sent-by port


def test_over_tcp_responses_go_back_to_the_connection() -> None:
    tl = layer()
    req = incoming(sent_by="10.9.9.9:5072", via_params="")
    tl.receive(req, ("127.0.0.5", 40001), "tcp", 0.0)
    [ev] = tl.events()
    assert isinstance(ev, RequestReceived)
    tl.send_response(ev.txn_id, answer(req, 404), 0.0)
    [out] = tl.outgoing()
    assert (out.dest, out.transport) == (("127.0.0.5", 40001), "tcp")


def test_stamping_is_idempotent_and_keeps_the_bytes_of_a_stamped_request() -> None:
    req = incoming(sent_by="10.9.9.9:5070")
    stamp_top_via(req, ("127.0.0.5", 40000))
    once = req.to_bytes()
    again = parse_message(once)
    assert isinstance(again, Request)
    stamp_top_via(again, ("127.0.0.5", 40000))
    assert again.raw == once  # nothing changed: the parsed bytes are still what it says


# -- transport errors ------------------------------------------------------------------------
def test_transport_error_ends_server_transactions_to_that_peer() -> None:
    tl = layer()
    req = incoming()
    event = start(tl, req)
    tl.send_response(event.txn_id, answer(req, 486), 0.0)
    tl.transport_error(PEER, "udp", 0.1)
    assert kinds(tl.events()) == ["TransportFailed", "TransactionTerminated"]
    assert_idle(tl)
