"""Helpers that drive the transaction layer's client side on a fake clock (RFC 3261
§17.1); shared by the transaction, server-flush and memory tests."""

from __future__ import annotations

import random

from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from sipmask.sip.timers import TimerConfig
from sipmask.sip.transaction import (
    Outgoing,
    TransactionLayer,
    TUEvent,
)

PEER = ("127.0.0.1", 5090)
LOCAL = ("127.0.0.1", 5060)


def layer(**kw: object) -> TransactionLayer:
    return TransactionLayer(TimerConfig(), local_via_host=LOCAL[0], local_port=LOCAL[1],
                            rand=random.Random(7).randbytes, **kw)  # type: ignore[arg-type]


def request(method: str = "INVITE", cseq: int = 1, via: str | None = None,
            extra: str = "") -> Request:
    text = (
        f"{method} sip:13900000002@127.0.0.1:5090 SIP/2.0\r\n"
        + f"Via: {via or 'SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKplaceholder'}\r\n"
        + "Route: <sip:127.0.0.9;lr>\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:700100000000001@127.0.0.1>;tag=ours\r\n"
        "To: <sip:13900000002@127.0.0.1>\r\n"
        "Call-ID: leg-b@127.0.0.1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:sipmask@127.0.0.1:5060>\r\n"
        + extra + "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Request)
    # The parser insists on a Via; tests that want the layer to add one take it out.
    if via is None:
        msg.headers.remove("via")
    return msg


def reply(req: Request, status: int, *, tag: str | None = "theirs",
          method: str | None = None) -> Response:
    """The response the peer would send: the request's Via, a To tag, parsed from bytes."""
    to = req.headers.get("to") or ""
    if tag is not None and status > 100:
        to += f";tag={tag}"
    cseq = req.cseq
    text = (
        f"SIP/2.0 {status} Whatever\r\n"
        + "".join(f"Via: {v}\r\n" for v in req.headers.get_all("via"))
        + f"From: {req.headers.get('from')}\r\nTo: {to}\r\n"
        f"Call-ID: {req.call_id}\r\nCSeq: {cseq.number} {method or cseq.method}\r\n"
        + ("Contact: <sip:13900000002@127.0.0.1:5090>\r\n" if 100 < status < 300 else "")
        + "Content-Length: 0\r\n\r\n"
    )
    msg = parse_message(text.encode())
    assert isinstance(msg, Response)
    return msg


def sent(tl: TransactionLayer) -> list[Request | Response]:
    out: list[Request | Response] = []
    for o in tl.outgoing():
        assert isinstance(o, Outgoing)
        out.append(parse_message(o.data))
    return out


def run_timers(tl: TransactionLayer, until: float) -> list[tuple[float, list[bytes]]]:
    """Fire timers one deadline at a time up to `until`; what was sent at each deadline."""
    log: list[tuple[float, list[bytes]]] = []
    while True:
        at = tl.next_timer()
        if at is None or at > until:
            return log
        tl.handle_timer(at)
        log.append((at, [o.data for o in tl.outgoing()]))


def kinds(events: list[TUEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def assert_idle(tl: TransactionLayer) -> None:
    assert tl.gauges() == {"invite_client": 0, "non_invite_client": 0, "invite_server": 0,
                           "non_invite_server": 0}
    assert len(tl) == 0
    assert tl.next_timer() is None
