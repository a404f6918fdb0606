"""Bytes from a socket → a message for the core, or the stateless answer to bad bytes.

Shared by the UDP and TCP shells so both treat a malformed message the same way:
RFC 3261 §8.2 (a request the UAS cannot parse) answered 400 with a reason phrase naming the
problem when the Via and the other §8.1.1 headers are readable; otherwise dropped. Both
outcomes are counted. Nothing here raises on peer input.
"""

from __future__ import annotations

from dataclasses import dataclass

from sipmask.entropy import token_bytes
from sipmask.errors import MessageTooLarge, ParseError
from sipmask.sip.headers import Headers
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message, salvage
from sipmask.sip.transports import RELIABLE, Address
from sipmask.sip.transports import Transport as TransportName
from sipmask.sip.uri import NameAddr, Via
from sipmask.transport.counters import SipCounters

# §8.2.6.2: a UAS adds a To tag to every non-100 response it builds. A fresh random one
# each time (§19.3: tags are random): a fixed tag would mark every such answer as sipmask's
# and tie them together for whoever probes.
STATELESS_TAG_BYTES = 8


@dataclass(frozen=True)
class Rejection:
    """A message that could not be parsed: the answer to send (None: drop) and where to."""

    error: ParseError
    answer: bytes | None
    target: Address | None


def decode(data: bytes, source: Address, transport: TransportName, counters: SipCounters,
           max_bytes: int) -> Request | Response | Rejection:
    """Parse one complete message and count it. (The transaction layer stamps the top Via of
    requests, §18.2.1; the shell only parses.)"""
    try:
        message = parse_message(data, max_bytes, stream=transport in RELIABLE)
    except ParseError as exc:
        return reject(data, exc, source, counters)
    counters.received += 1
    if isinstance(message, Request):
        counters.requests_by_method[message.method] += 1
    else:
        counters.responses_by_status[message.status] += 1
    return message


def reject(data: bytes, error: ParseError, source: Address,
           counters: SipCounters) -> Rejection:
    """Count a parse failure and build its stateless answer when one is possible."""
    counters.parse_errors += 1
    if isinstance(error, MessageTooLarge):
        counters.too_large += 1
    answer: bytes | None = None
    target: Address | None = None
    try:
        built = error_response(data, error, source)
    except ParseError:
        built = None
    if built is not None:
        response, via = built
        answer = response.to_bytes()
        target = via.response_target(source)
        counters.answered_400 += 1
    else:
        counters.dropped += 1
    return Rejection(error, answer, target)


def error_response(data: bytes, error: ParseError, source: Address
                   ) -> tuple[Response, Via] | None:
    """The error response for unparsable `data`, with its stamped top Via, or None when
    the message cannot be answered: headers unreadable, a response (§8.1.3.3 has no error
    path), or an ACK (§17.1.1.3: an ACK is never answered)."""
    # Only the header block is salvaged; never scan a megabyte of body for it.
    head = data[:8192]
    headers = salvage(head)
    if headers is None:
        return None
    cseq_text = headers.get("cseq") or ""
    method = cseq_text.split()[-1] if cseq_text.split() else ""
    if method.upper() == "ACK" or head.lstrip(b"\r\n")[:4].upper() == b"ACK ":
        return None
    vias = headers.get_all("via")
    top = Via.parse(vias[0]).stamped(source)
    to_value = headers.get("to") or ""
    try:
        to_addr = NameAddr.parse(to_value)
        if to_addr.tag is None:
            to_value = str(to_addr.with_tag(token_bytes(STATELESS_TAG_BYTES).hex()))
    except ParseError:
        pass  # answer with the To as it came: the peer matches on Via branch anyway
    pairs = [("Via", str(top)), *(("Via", v) for v in vias[1:]),
             ("From", headers.get("from") or ""), ("To", to_value),
             ("Call-ID", headers.get("call-id") or ""), ("CSeq", cseq_text),
             ("Content-Length", "0")]
    if any("\r" in v or "\n" in v for _, v in pairs):
        return None
    return Response(error.status, _phrase(error.reason), Headers.of(*pairs)), top


def _phrase(reason: str) -> str:
    """RFC 3261 §25.1 Reason-Phrase: no CR/LF and no other control characters."""
    return "".join(c if c >= " " and c != "\x7f" else "?" for c in reason)[:120] or "Bad Request"

