"""Dialogs (RFC 3261 §12, §13.2.2.4, §15; RFC 3262 PRACK) and identifiers from an injected
random source; plus one UAC call driven through the transaction layer."""

from __future__ import annotations

import random

import pytest

from sipmask.errors import CallStateError, ParseError, SipError
from sipmask.sip.dialog import (
    TRANSITIONS,
    Dialog,
    DialogEvent,
    DialogId,
    DialogState,
    incoming_id,
    new_branch,
    new_call_id,
    new_tag,
)
from sipmask.sip.message import Request
from sipmask.sip.parser import parse_message
from sipmask.sip.timers import TimerConfig
from sipmask.sip.transaction import ResponseReceived, TransactionLayer
from tests.support.dialogs import INVITE, in_dialog_request, parse_request, response_to, uac_dialog


# -- identifiers ----------------------------------------------------------------------------------
def test_identifiers_come_from_the_injected_random_source() -> None:
    assert new_tag(random.Random(1).randbytes) == new_tag(random.Random(1).randbytes)
    assert new_tag(random.Random(1).randbytes) != new_tag(random.Random(2).randbytes)
    assert len(new_tag(random.Random(1).randbytes)) == 16
    call_id = new_call_id(random.Random(3).randbytes, host="127.0.0.1")
    assert call_id.endswith("@127.0.0.1") and len(call_id.split("@")[0]) == 32
    assert "@" not in new_call_id(random.Random(3).randbytes)
    branch = new_branch(random.Random(4).randbytes)
    assert branch.startswith("z9hG4bK") and branch == new_branch(random.Random(4).randbytes)
    # The default source is the OS's: two calls differ.
    assert new_tag() != new_tag() and new_branch() != new_branch()


# -- UAC side (§12.1.2) ---------------------------------------------------------------------------
def test_uac_dialog_from_a_2xx_reverses_record_route_and_targets_the_contact() -> None:
    _, dlg = uac_dialog()
    assert dlg.id == DialogId("dlg-1@127.0.0.1", "local1", "remote1")
    assert dlg.state is DialogState.CONFIRMED and dlg.is_uac
    assert dlg.route_set == ("<sip:p1.example;lr>", "<sip:p2.example;lr>")
    assert dlg.remote_target == "sip:13900000002@127.0.0.8:5090"
    assert (dlg.local_seq, dlg.remote_seq) == (10, None)
    assert dlg.local_uri == '"X" <sip:700100000000001@127.0.0.1>'
    assert dlg.remote_uri == "<sip:13900000002@127.0.0.1>"


def test_early_dialog_is_confirmed_by_2xx_which_recomputes_the_route_set() -> None:
    invite, dlg = uac_dialog(180, record_route=("<sip:old.example;lr>",))
    assert dlg.state is DialogState.EARLY
    ok = response_to(invite, 200, contact="<sip:13900000002@127.0.0.9:5090>",
                     record_route=("<sip:b.example;lr>", "<sip:a.example;lr>"))
    assert dlg.on_response(ok) is DialogState.CONFIRMED
    # §13.2.2.4: the route set comes from the 2xx; §12.2.1.2: so does the target.
    assert dlg.route_set == ("<sip:a.example;lr>", "<sip:b.example;lr>")
    assert dlg.remote_target == "sip:13900000002@127.0.0.9:5090"


def test_a_final_failure_ends_an_early_dialog_but_not_a_confirmed_one() -> None:
    invite, early = uac_dialog(183)
    assert early.on_response(response_to(invite, 486)) is DialogState.TERMINATED
    _, confirmed = uac_dialog(200)
    reinvite = confirmed.new_request("INVITE")
    # §14.1: a failed re-INVITE leaves the dialog as it was.
    assert confirmed.on_response(response_to(reinvite, 488)) is DialogState.CONFIRMED
    # §12.2.1.2: 481 or 408 to any request in the dialog ends it.
    info = confirmed.new_request("INFO")
    assert confirmed.on_response(response_to(info, 481)) is DialogState.TERMINATED


def test_a_terminated_dialog_takes_no_more_events() -> None:
    _, dlg = uac_dialog()
    dlg.terminate()
    assert dlg.state is DialogState.TERMINATED
    for event in DialogEvent:
        assert (DialogState.TERMINATED, event) not in TRANSITIONS
        with pytest.raises(CallStateError):
            dlg.apply(event)
    with pytest.raises(CallStateError):
        dlg.new_request("BYE")


# -- requests sent in the dialog (§12.2.1.1, §13.2.2.4) -----------------------------------------
def test_new_request_with_loose_routes_keeps_the_target_as_request_uri() -> None:
    _, dlg = uac_dialog()
    bye = dlg.new_request("BYE")
    assert bye.method == "BYE" and bye.uri == "sip:13900000002@127.0.0.8:5090"
    assert bye.headers.get_all("route") == ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    assert bye.cseq.number == 11 and bye.cseq.method == "BYE"
    assert bye.from_.tag == "local1" and bye.to.tag == "remote1"
    assert bye.call_id == "dlg-1@127.0.0.1"
    assert bye.headers.get("max-forwards") == "70"
    assert "via" not in bye.headers  # the transaction layer adds it
    assert "contact" not in bye.headers  # BYE is not a target refresh
    info = dlg.new_request("INFO", body=b"Signal=5\r\n", content_type="application/dtmf-relay")
    assert info.cseq.number == 12
    assert info.headers.get("content-type") == "application/dtmf-relay"
    assert info.headers.get("content-length") == "10"
    reinvite = dlg.new_request("INVITE")
    assert reinvite.headers.get("contact") == "<sip:sipmask@127.0.0.1:5060>"
    assert dlg.next_hop() == "sip:p1.example;lr"


def test_new_request_with_a_strict_router_first() -> None:
    _, dlg = uac_dialog(record_route=("<sip:p2.example;lr>",
                                      "<sip:strict.example;maddr=127.0.0.7>"))
    bye = dlg.new_request("BYE")
    # §12.2.1.1: the strict router becomes the Request-URI, the target goes last in Route.
    assert bye.uri == "sip:strict.example;maddr=127.0.0.7"
    assert bye.headers.get_all("route") == ["<sip:p2.example;lr>",
                                            "<sip:13900000002@127.0.0.8:5090>"]


def test_without_routes_there_is_no_route_header() -> None:
    _, dlg = uac_dialog(record_route=())
    bye = dlg.new_request("BYE")
    assert bye.uri == dlg.remote_target and "route" not in bye.headers
    assert dlg.next_hop() == dlg.remote_target


def test_ack_for_2xx_uses_the_invites_cseq_number_and_does_not_move_the_sequence() -> None:
    _, dlg = uac_dialog()
    ack = dlg.ack(10)
    assert ack.method == "ACK" and ack.cseq.number == 10 and ack.cseq.method == "ACK"
    assert ack.uri == dlg.remote_target and ack.to.tag == "remote1"
    assert dlg.local_seq == 10
    assert dlg.new_request("BYE").cseq.number == 11
    with pytest.raises(CallStateError):
        dlg.new_request("ACK")
    with pytest.raises(CallStateError):
        dlg.new_request("CANCEL")


def test_prack_carries_rack_from_the_reliable_provisional() -> None:
    invite, dlg = uac_dialog(183)
    rel = response_to(invite, 183, extra="Require: 100rel\r\nRSeq: 7\r\n")
    prack = dlg.prack(rel)
    assert prack.method == "PRACK" and prack.cseq.number == 11
    assert prack.headers.get("rack") == "7 10 INVITE"
    with pytest.raises(ParseError):
        dlg.prack(response_to(invite, 183))


# -- UAS side and requests received (§12.1.1, §12.2.2) -------------------------------------------
def test_uas_dialog_keeps_record_route_in_order_and_has_no_local_sequence_yet() -> None:
    req = parse_request(INVITE.replace(
        "Contact:", "Record-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\nContact:"))
    dlg = Dialog.as_uas(req, "uas1", local_contact="<sip:sipmask@127.0.0.1:5060>")
    assert dlg.state is DialogState.EARLY and not dlg.is_uac
    assert dlg.id == DialogId("dlg-1@127.0.0.1", "uas1", "local1")
    assert dlg.route_set == ("<sip:p1.example;lr>", "<sip:p2.example;lr>")
    assert dlg.remote_target == "sip:sipmask@127.0.0.1:5060"
    assert (dlg.local_seq, dlg.remote_seq) == (None, 10)
    bye = dlg.new_request("BYE")
    assert bye.cseq.number == 1  # §12.2.1.1: an empty local sequence starts fresh
    assert bye.from_.tag == "uas1" and bye.to.tag == "local1"
    assert bye.headers.get("to") == '"X" <sip:700100000000001@127.0.0.1>;tag=local1'
    confirmed = Dialog.as_uas(req, "uas1", confirmed=True)
    assert confirmed.state is DialogState.CONFIRMED


def test_a_request_with_a_lower_cseq_is_refused_with_500() -> None:
    _, dlg = uac_dialog()
    dlg.receive_request(in_dialog_request("INFO", 5))
    assert dlg.remote_seq == 5
    dlg.receive_request(in_dialog_request("INFO", 5))  # §12.2.2: only "lower" is refused
    with pytest.raises(SipError) as err:
        dlg.receive_request(in_dialog_request("INFO", 4))
    assert err.value.status == 500
    assert dlg.remote_seq == 5
    dlg.receive_request(in_dialog_request("ACK", 1))  # ACK refers to its INVITE's number
    assert dlg.remote_seq == 5


def test_target_refresh_and_bye_received() -> None:
    _, dlg = uac_dialog()
    dlg.receive_request(in_dialog_request("INVITE", 1, contact="<sip:b@127.0.0.66:5999>"))
    assert dlg.remote_target == "sip:b@127.0.0.66:5999"
    dlg.receive_request(in_dialog_request("UPDATE", 2, contact="<sip:b@127.0.0.67:5999>"))
    assert dlg.remote_target == "sip:b@127.0.0.67:5999"
    dlg.receive_request(in_dialog_request("INFO", 3, contact="<sip:b@127.0.0.68:5999>"))
    assert dlg.remote_target == "sip:b@127.0.0.67:5999"  # INFO refreshes nothing
    dlg.receive_request(in_dialog_request("BYE", 4))
    assert dlg.state is DialogState.TERMINATED
    with pytest.raises(SipError) as err:
        dlg.receive_request(in_dialog_request("BYE", 5))
    assert err.value.status == 481


def test_matching_an_incoming_message_to_its_dialog() -> None:
    invite, dlg = uac_dialog()
    request_in = in_dialog_request("BYE", 1)
    assert incoming_id(request_in) == dlg.id and dlg.matches(request_in)
    assert dlg.matches(response_to(invite, 200))
    assert not dlg.matches(response_to(invite, 200, tag="other"))
    assert not dlg.matches(parse_request(INVITE))  # no To tag: not in this dialog


# -- with the transaction layer --------------------------------------------------------------------
def test_a_uac_call_through_the_transaction_layer() -> None:
    tl = TransactionLayer(TimerConfig(), local_via_host="127.0.0.1", local_port=5060,
                          rand=random.Random(9).randbytes)
    invite = parse_request(INVITE)
    invite.headers.remove("via")
    peer = ("127.0.0.1", 5090)
    txn_id = tl.send_request(invite, peer, "udp", 0.0)
    tl.outgoing()
    ok = response_to(invite, 200, record_route=())
    tl.receive(ok, peer, "udp", 0.1)
    [event] = tl.events()
    assert isinstance(event, ResponseReceived)
    dlg = Dialog.as_uac(invite, event.response)
    tl.send_ack(txn_id, dlg.ack(invite.cseq.number), ("127.0.0.8", 5090), "udp")
    [ack_out] = tl.outgoing()
    ack = parse_message(ack_out.data)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.top_via.branch != invite.top_via.branch and ack.cseq.number == 10
    # The 2xx is retransmitted (our ACK was lost): the layer ACKs again by itself.
    tl.receive(response_to(invite, 200, record_route=()), peer, "udp", 0.6)
    assert tl.outgoing() == [ack_out] and tl.events() == []
    bye = dlg.new_request("BYE")
    bye_id = tl.send_request(bye, ("127.0.0.8", 5090), "udp", 1.0)
    tl.receive(response_to(bye, 200), ("127.0.0.8", 5090), "udp", 1.1)
    events = tl.events()
    assert isinstance(events[0], ResponseReceived) and events[0].txn_id == bye_id
    dlg.terminate()
    assert dlg.state is DialogState.TERMINATED
