"""Random flows through the transaction layer (hypothesis): whatever peers send, in any order
and at any time, the layer never raises; whatever the TU does, it gets either the action or
a TransactionError; and once the TU has answered what it was given and time runs on, every
transaction ends and the gauges are zero."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from sipmask.errors import TransactionError
from sipmask.sip.message import Request, Response, build_response
from sipmask.sip.parser import parse_message
from sipmask.sip.timers import TimerConfig
from sipmask.sip.transaction import (
    CancelReceived,
    RequestReceived,
    ResponseReceived,
    TransactionLayer,
    TransactionTerminated,
)

PEER = ("127.0.0.1", 5070)
METHODS = ("INVITE", "ACK", "CANCEL", "OPTIONS", "BYE")
STATUSES = (100, 180, 183, 200, 202, 302, 404, 486, 487, 503)


def peer_request(method: str, branch: int, to_tag: bool, cseq: int) -> Request:
    to = "<sip:700100000000001@127.0.0.1>" + (";tag=b2b" if to_tag else "")
    text = (
        f"{method} sip:700100000000001@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:13800000001@127.0.0.1>;tag=a\r\n"
        f"To: {to}\r\nCall-ID: r@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n")
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def our_request(method: str, cseq: int) -> Request:
    text = (
        f"{method} sip:13900000002@127.0.0.1:5090 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKplaceholder\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:700100000000001@127.0.0.1>;tag=x\r\n"
        f"To: <sip:13900000002@127.0.0.1>\r\nCall-ID: o@127.0.0.1\r\nCSeq: {cseq} {method}\r\n"
        "Content-Length: 0\r\n\r\n")
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    msg.headers.remove("via")
    return msg


def peer_response(req: Request, status: int) -> Response:
    resp = build_response(req, status, to_tag="callee")
    parsed = parse_message(resp.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


@dataclass(frozen=True)
class PeerSends:
    method: str
    branch: int
    to_tag: bool
    cseq: int


@dataclass(frozen=True)
class PeerAnswers:
    which: int
    status: int


@dataclass(frozen=True)
class TuAnswers:
    which: int
    status: int


@dataclass(frozen=True)
class TuSends:
    method: str
    transport: str


@dataclass(frozen=True)
class TuCancels:
    which: int


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Broken:
    transport: str


ops = st.lists(st.one_of(
    st.builds(PeerSends, st.sampled_from(METHODS), st.integers(0, 3), st.booleans(),
              st.integers(1, 3)),
    st.builds(PeerAnswers, st.integers(0, 5), st.sampled_from(STATUSES)),
    st.builds(TuAnswers, st.integers(0, 5), st.sampled_from(STATUSES)),
    st.builds(TuSends, st.sampled_from(("INVITE", "OPTIONS", "BYE")),
              st.sampled_from(("udp", "tcp"))),
    st.builds(TuCancels, st.integers(0, 5)),
    st.builds(Wait, st.sampled_from((0.0, 0.1, 0.5, 2.0, 5.0, 31.9, 40.0))),
    st.builds(Broken, st.sampled_from(("udp", "tcp"))),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_flows_never_raise_on_peer_input_and_always_wind_down(flow: list[object]) -> None:
    tl = TransactionLayer(TimerConfig(), local_via_host="127.0.0.1", local_port=5060)
    now = 0.0
    server_txns: list[RequestReceived] = []
    client_txns: list[tuple[str, Request]] = []
    cseq = 1
    # Ids the TU was given and that have not ended yet. An id comes back when the same
    # request arrives again after its transaction ended (a late retransmission).
    live: set[str] = set()

    def drain() -> None:
        for event in tl.events():
            if isinstance(event, RequestReceived | CancelReceived):
                if isinstance(event, RequestReceived):
                    server_txns.append(event)
                live.add(event.txn_id)
            elif isinstance(event, TransactionTerminated):
                assert event.txn_id in live  # each transaction ends once
                live.remove(event.txn_id)
            elif isinstance(event, ResponseReceived):
                assert event.txn_id in live
        tl.outgoing()

    for op in flow:
        if isinstance(op, PeerSends):
            tl.receive(peer_request(op.method, op.branch, op.to_tag, op.cseq), PEER, "udp", now)
        elif isinstance(op, PeerAnswers) and client_txns:
            _, req = client_txns[op.which % len(client_txns)]
            tl.receive(peer_response(req, op.status), ("127.0.0.1", 5090), "udp", now)
        elif isinstance(op, TuAnswers) and server_txns:
            event = server_txns[op.which % len(server_txns)]
            # A final already sent, or the transaction is over: TU misuse, refused.
            with contextlib.suppress(TransactionError):
                tl.send_response(event.txn_id, build_response(event.request, op.status,
                                                              to_tag="b2b"), now)
        elif isinstance(op, TuSends):
            req = our_request(op.method, cseq)
            cseq += 1
            txn_id = tl.send_request(req, ("127.0.0.1", 5090), op.transport, now)  # type: ignore[arg-type]
            client_txns.append((txn_id, req))
            live.add(txn_id)
        elif isinstance(op, TuCancels) and client_txns:
            txn_id, req = client_txns[op.which % len(client_txns)]
            if req.method == "INVITE" and tl.state_of(txn_id) is not None:
                cancel_id = tl.cancel(txn_id, now)
                if cancel_id is not None:
                    live.add(cancel_id)
        elif isinstance(op, Wait):
            now += op.seconds
            tl.handle_timer(now)
        elif isinstance(op, Broken):
            tl.transport_error(("127.0.0.1", 5090), op.transport, now)  # type: ignore[arg-type]
        drain()
        assert sum(tl.gauges().values()) == len(tl)

    # The TU does its part (a final answer to every request it was given, a CANCEL for
    # every INVITE still ringing), then the peers fall silent: every timer runs out and
    # every transaction ends.
    for event in server_txns:
        if tl.state_of(event.txn_id) is not None:
            # Accepted or Completed already: nothing more to say.
            with contextlib.suppress(TransactionError):
                tl.send_response(event.txn_id, build_response(event.request, 500,
                                                              to_tag="b2b"), now)
    for txn_id, req in client_txns:
        if req.method == "INVITE" and tl.state_of(txn_id) is not None:
            cancel_id = tl.cancel(txn_id, now)
            if cancel_id is not None:
                live.add(cancel_id)
    drain()
    while (at := tl.next_timer()) is not None:
        assert at <= now + 2 * 64 * 0.5 + 1
        tl.handle_timer(at)
        drain()
    assert len(tl) == 0 and set(tl.gauges().values()) == {0}
    assert live == set()
