"""The transaction layer's shortcuts follow the settings they were computed from: the timer
intervals it remembers are those of its current TimerConfig, and the 100 Trying delay is
read when each INVITE server transaction starts."""

from __future__ import annotations

from sipmask.sip.timers import Timer, TimerConfig
from sipmask.sip.transaction import TransactionLayer
from tests.support import txn_client as client
from tests.support import txn_server as server


def test_a_new_timer_config_gives_new_intervals() -> None:
    tl = client.layer()
    req = client.request()
    txn_id = tl.send_request(req, client.PEER, "udp", 0.0)
    assert tl._txns[txn_id].intervals[Timer.A] == TimerConfig().t1
    tl.timers = TimerConfig(t1=0.1, t2=4.0, t4=5.0)
    other = client.request()
    other.headers.remove("via")
    other.headers.set("Call-ID", "another")
    second = tl.send_request(other, client.PEER, "udp", 0.0)
    assert tl._txns[second].intervals[Timer.A] == 0.1
    assert tl._txns[second].intervals[Timer.B] == 64 * 0.1
    assert tl._txns[txn_id].intervals[Timer.A] == TimerConfig().t1   # its own, as started


def test_the_trying_delay_is_read_when_a_transaction_starts() -> None:
    tl = server.layer(trying_delay=0.2)
    event = server.start(tl, server.incoming())
    assert tl._txns[event.txn_id].intervals[Timer.TRYING] == 0.2
    tl.trying_delay = 0.05
    event = server.start(tl, server.incoming(branch="z9hG4bKa2"))
    assert tl._txns[event.txn_id].intervals[Timer.TRYING] == 0.05
    tl.trying_delay = None
    event = server.start(tl, server.incoming(branch="z9hG4bKa3"))
    assert Timer.TRYING not in tl._txns[event.txn_id].intervals


def test_tcp_and_udp_intervals_are_kept_apart() -> None:
    tl = TransactionLayer(TimerConfig(), local_via_host="127.0.0.1", local_port=5060)
    udp = tl.send_request(client.request(), client.PEER, "udp", 0.0)
    other = client.request()
    other.headers.remove("via")
    tcp = tl.send_request(other, client.PEER, "tcp", 0.0)
    assert Timer.A in tl._txns[udp].intervals and Timer.A not in tl._txns[tcp].intervals
    assert tl._txns[tcp].intervals[Timer.B] == tl._txns[udp].intervals[Timer.B]
