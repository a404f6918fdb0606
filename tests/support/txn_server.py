"""Helpers that drive the transaction layer's server side on a fake clock (RFC 3261
§17.2); shared by the transaction, server-flush and memory tests."""

from __future__ import annotations

from sipmask.sip.message import Request, Response, build_response
from sipmask.sip.parser import parse_message
from sipmask.sip.timers import TimerConfig
from sipmask.sip.transaction import (
    RequestReceived,
    TransactionLayer,
    TUEvent,
)

PEER = ("127.0.0.1", 5070)


def layer(trying_delay: float | None = 0.2) -> TransactionLayer:
    return TransactionLayer(TimerConfig(), local_via_host="127.0.0.1", local_port=5060,
                            trying_delay=trying_delay)


def incoming(method: str = "INVITE", *, branch: str = "z9hG4bKa1", sent_by: str = "127.0.0.1:5070",
             cseq: int = 1, to_tag: str | None = None, extra: str = "",
             via_params: str = ";rport") -> Request:
    to = "<sip:700100000000001@127.0.0.1>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} sip:700100000000001@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {sent_by};branch={branch}{via_params}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:13800000001@127.0.0.1>;tag=caller\r\n"
        f"To: {to}\r\n"
        "Call-ID: leg-a@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:13800000001@127.0.0.1:5070>\r\n"
        + extra + "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    return msg


def receive(tl: TransactionLayer, req: Request, now: float, source: tuple[str, int] = PEER,
            transport: str = "udp") -> list[TUEvent]:
    tl.receive(req, source, transport, now)  # type: ignore[arg-type]
    return tl.events()


def start(tl: TransactionLayer, req: Request, now: float = 0.0,
          transport: str = "udp") -> RequestReceived:
    [event] = receive(tl, req, now, transport=transport)
    assert isinstance(event, RequestReceived)
    return event


def statuses(tl: TransactionLayer) -> list[int]:
    out = []
    for o in tl.outgoing():
        msg = parse_message(o.data)
        assert isinstance(msg, Response)
        out.append(msg.status)
    return out


def answer(req: Request, status: int, tag: str = "b2b") -> Response:
    return build_response(req, status, to_tag=tag)


def kinds(events: list[TUEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def assert_idle(tl: TransactionLayer) -> None:
    assert set(tl.gauges().values()) == {0}
    assert len(tl) == 0 and tl.next_timer() is None


def run_timers(tl: TransactionLayer, until: float) -> list[tuple[float, list[int]]]:
    log = []
    while (at := tl.next_timer()) is not None and at <= until:
        tl.handle_timer(at)
        log.append((round(at, 6), statuses(tl)))
    return log
