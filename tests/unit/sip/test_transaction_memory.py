"""What a transaction keeps while it waits out Timers D, J, K, L and M (RFC 3261 §17, RFC
6026): only what a retransmission can still need. At a few hundred calls/s some 25,000
transactions sit in those states (bench/soak.py), so a request's bytes or a parsed response
kept there for nothing is most of the server's memory."""

from __future__ import annotations

from sipmask.sip.transaction import AckReceived, TransactionLayer
from tests.support import txn_client as client
from tests.support import txn_server as server


def txn_of(tl: TransactionLayer, txn_id: str):  # type: ignore[no-untyped-def]
    return tl._txns[txn_id]


def test_a_client_transaction_drops_its_request_bytes_at_the_final_response() -> None:
    for status in (200, 486):
        tl = client.layer()
        req = client.request()
        txn_id = tl.send_request(req, client.PEER, "udp", 0.0)
        assert txn_of(tl, txn_id).request_bytes                     # retransmitted until
        tl.receive(client.reply(req, 180), client.PEER, "udp", 0.1)
        assert txn_of(tl, txn_id).request_bytes
        tl.receive(client.reply(req, status), client.PEER, "udp", 0.2)
        assert txn_of(tl, txn_id).request_bytes == b""
        tl.outgoing()
        client.run_timers(tl, 100.0)                                # no empty datagram
        assert all(o.data for o in tl.outgoing())
        client.assert_idle(tl)


def test_an_invite_server_keeps_its_2xx_for_the_ack_timeout_only_until_the_ack() -> None:
    tl = server.layer()
    invite = server.incoming()
    event = server.start(tl, invite)
    ok = server.answer(invite, 200)
    tl.send_response(event.txn_id, ok, 0.1)
    txn = txn_of(tl, event.txn_id)
    assert txn.last_response is ok and txn.last_bytes
    ack = server.incoming("ACK", branch="z9hG4bKack", to_tag="b2b")
    events = server.receive(tl, ack, 0.2)
    assert [type(e) for e in events] == [AckReceived]
    assert txn.last_response is None and txn.last_bytes            # 2xx bytes stay


def test_a_non_invite_server_resends_bytes_without_keeping_the_response() -> None:
    tl = server.layer()
    bye = server.incoming("BYE", to_tag="b2b", cseq=2)
    event = server.start(tl, bye)
    tl.send_response(event.txn_id, server.answer(bye, 200), 0.1)
    first = [o.data for o in tl.outgoing()]
    txn = txn_of(tl, event.txn_id)
    assert txn.last_response is None
    server.receive(tl, server.incoming("BYE", to_tag="b2b", cseq=2), 0.5)   # retransmitted
    assert [o.data for o in tl.outgoing()] == first
