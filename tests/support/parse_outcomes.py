"""What a parse comes to, compared between the parser's paths: `outcome` (the message's
start line, fields, body and bytes, or the refusal) and `full_path` (the same with no
learned layout, so only the full grammar runs). RESPONSE is a 200 OK with the layout of a
carrier's answer."""

from __future__ import annotations

from sipmask.errors import ParseError
from sipmask.sip import parser
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message

RESPONSE = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK-1;received=10.9.9.9;rport=5062\r\n"
    b"Via: SIP/2.0/UDP 10.1.2.4;branch=z9hG4bK-2\r\n"
    b"From: <sip:+8613800000001@10.1.2.3>;tag=a1\r\n"
    b"To: \"Callee\" <sip:7001@10.20.30.40>;tag=b2\r\n"
    b"Call-ID: c1@10.1.2.3\r\n"
    b"CSeq: 102 INVITE\r\n"
    b"Contact: <sip:7001@10.20.30.40:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)

Outcome = tuple[object, ...]


def outcome(data: bytes, stream: bool = False) -> Outcome:
    try:
        msg = parse_message(data, stream=stream)
    except ParseError as exc:
        return ("refused", type(exc).__name__, exc.status, str(exc))
    common = (msg.start_line(), msg.headers.keys(), msg.headers.fields(), msg.body, msg.raw,
              msg.to_bytes())
    if isinstance(msg, Request):
        return ("request", msg.method, msg.uri, msg.version, *common)
    assert isinstance(msg, Response)
    return ("response", msg.status, msg.reason, msg.version, *common)


def full_path(data: bytes, stream: bool = False) -> Outcome:
    parser._forget_layouts()
    return outcome(data, stream)
