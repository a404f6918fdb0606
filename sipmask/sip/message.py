"""SIP requests and responses.

A parsed message remembers the bytes it came from; while nothing is changed, `to_bytes()`
returns them unchanged. Once a header, the start line or the body changes, the message is
rebuilt from its fields, and fields that were not changed still keep their original text.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sipmask.errors import ParseError
from sipmask.sip import grammar
from sipmask.sip.headers import Field, Headers, fields_of, is_token
from sipmask.sip.uri import NameAddr, Uri, Via, parse_uri, written_uri

SIP_VERSION = "SIP/2.0"

# RFC 3261 §21 reason phrases for the codes sipmask sends itself.
REASONS: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 410: "Gone", 413: "Request Entity Too Large",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme", 420: "Bad Extension",
    421: "Extension Required", 422: "Session Interval Too Small", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 482: "Loop Detected", 483: "Too Many Hops",
    484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Server Time-out",
    505: "Version Not Supported", 513: "Message Too Large", 603: "Decline",
}


_CSEQ = re.compile(grammar.CSEQ)


class CSeq(NamedTuple):
    """§20.16: the sequence number and the method of a request (immutable)."""

    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        m = _CSEQ.fullmatch(text)
        if m is None:
            raise ParseError(_why_cseq(text))
        number, method = m.groups()
        value = int(number)
        # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31.
        if value >= 2**31:
            raise ParseError("Bad CSeq: number out of range")
        return cls(value, method)

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


class Message:
    """What requests and responses share: headers, body, original bytes.

    Every attribute that is written on the wire either drops the original bytes when it is
    set (a property) or is checked before they are reused: `headers` (bytes reused only
    while it is still the `Headers` they were parsed with, unmodified), a request's `method`
    and a response's `status` (only while they are still the parsed ones). Those three are
    plain attributes because every layer reads them, dozens of times a call, and a property
    is a Python call each time. So `to_bytes()` can never send stale text after a change."""

    __slots__ = ("_body", "_raw", "_raw_headers", "_version", "headers")

    headers: Headers

    def __init__(self, headers: Headers, body: bytes = b"", version: str = SIP_VERSION,
                 raw: bytes | None = None) -> None:
        self.headers = headers
        self._body = body
        self._version = version
        self._raw = raw
        self._raw_headers = headers if raw is not None else None

    @property
    def version(self) -> str:
        return self._version

    @version.setter
    def version(self, value: str) -> None:
        self._version = value
        self._raw = None

    @property
    def raw(self) -> bytes | None:
        """The bytes this message was parsed from while they are still what it says."""
        headers = self.headers
        if headers is self._raw_headers and not headers.modified and self._start_as_parsed():
            return self._raw
        return None

    def _start_as_parsed(self) -> bool:
        """Whether the start line's plain attributes still say what the bytes say."""
        raise NotImplementedError

    # -- body ---------------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self._raw = None

    # -- the fields every transaction and dialog reads ---------------------------------
    # From, To, CSeq and the top Via are parsed once and kept on the Headers, which forgets
    # them when a field changes (Headers._changed); a new Headers starts with none. The
    # values are shared, so nobody changes them in place (with_tag and with_params build
    # new ones).
    @property
    def call_id(self) -> str:
        return self._field("call-id", "Call-ID")

    @property
    def cseq(self) -> CSeq:
        cseq = self.headers._p_cseq
        if cseq is None:
            cseq = self.headers._p_cseq = CSeq.parse(self._field("cseq", "CSeq"))
        return cseq

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("via")]

    @property
    def top_via(self) -> Via:
        headers = self.headers
        via = headers._p_via
        if via is None:
            values = headers.get_all("via")
            if not values:
                raise ParseError("Missing Via")
            via = headers._p_via = Via.parse(values[0])
        return via

    @property
    def from_(self) -> NameAddr:
        headers = self.headers
        addr = headers._p_from
        if addr is None:
            found = headers._m_from                   # the parser's match, if any
            addr = headers._p_from = NameAddr.of_match(found) if found is not None else \
                NameAddr.parse(self._field("from", "From"))
        return addr

    @property
    def to(self) -> NameAddr:
        headers = self.headers
        addr = headers._p_to
        if addr is None:
            found = headers._m_to
            addr = headers._p_to = NameAddr.of_match(found) if found is not None else \
                NameAddr.parse(self._field("to", "To"))
        return addr

    @property
    def contact(self) -> NameAddr | None:
        """The first Contact value (§8.1.1.8: the target of a dialog, §12.1), None when the
        message has none or it is `*` (REGISTER's)."""
        headers = self.headers
        addr = headers._p_contact
        if addr is None:
            found = headers._m_contact
            if found is not None:
                addr = NameAddr.of_match(found)
            else:
                values = headers.get_all("contact")
                if not values or values[0] == "*":
                    return None
                addr = NameAddr.parse(values[0])
            headers._p_contact = addr
        return addr

    @property
    def contact_uri(self) -> str | None:
        """str() of the first Contact value's URI (a dialog's remote target, §12.1.1,
        §12.1.2), None as for `contact`: read off the text the parser matched when that
        is what str() writes, else from the value."""
        headers = self.headers
        found = headers._m_contact
        if found is not None and headers._p_contact is None:
            text = written_uri(found)
            if text is not None:
                return text
        contact = self.contact
        return None if contact is None else str(contact.uri)

    def _field(self, key: str, name: str) -> str:
        """The value of a field every message must have; ParseError naming it when absent."""
        value = self.headers.get(key)
        if value is None:
            raise ParseError(f"Missing {name}")
        return value

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return None if value is None else value.split(";", 1)[0].strip().lower()

    # -- serialization -------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        raw = self.raw
        if raw is not None:
            return raw
        headers = self.headers
        # Content-Length always tells the truth about the body we send (§20.14); on a
        # stream transport it is how the peer finds the end of the message (§18.3).
        length = str(len(self._body))
        if headers.get("content-length") != length:
            headers.set("Content-Length", length)
        head = headers.render(self.start_line())
        return head.encode("utf-8", "surrogateescape") + self._body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    __slots__ = ("_parsed_method", "_uri", "method")

    method: str

    def __init__(self, method: str, uri: str, headers: Headers, body: bytes = b"",
                 version: str = SIP_VERSION, raw: bytes | None = None) -> None:
        self.headers = headers
        self._body = body
        self._version = version
        self._raw = raw
        self._raw_headers = headers if raw is not None else None
        self.method = self._parsed_method = method
        self._uri = uri

    def _start_as_parsed(self) -> bool:
        return self.method == self._parsed_method

    @property
    def uri(self) -> str:
        """The Request-URI as text; `parsed_uri` gives the typed form."""
        return self._uri

    @uri.setter
    def uri(self, value: str) -> None:
        self._uri = value
        self._raw = None

    @property
    def parsed_uri(self) -> Uri:
        return parse_uri(self._uri)

    def start_line(self) -> str:
        return f"{self.method} {self._uri} {self._version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} call-id={self.headers.get('call-id')}>"


class Response(Message):
    __slots__ = ("_parsed_status", "_reason", "status")

    status: int

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes = b"",
                 version: str = SIP_VERSION, raw: bytes | None = None) -> None:
        self.headers = headers
        self._body = body
        self._version = version
        self._raw = raw
        self._raw_headers = headers if raw is not None else None
        self.status = self._parsed_status = status
        self._reason = reason

    def _start_as_parsed(self) -> bool:
        return self.status == self._parsed_status

    @property
    def reason(self) -> str:
        return self._reason

    @reason.setter
    def reason(self, value: str) -> None:
        self._reason = value
        self._raw = None

    def start_line(self) -> str:
        return f"{self._version} {self.status} {self._reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} call-id={self.headers.get('call-id')}>"


def _why_cseq(text: str) -> str:
    """Why CSEQ refused `text`: the reason for the 400 (only ever a refusal)."""
    parts = re.split(grammar.LWS, text.strip(" \t"))
    if len(parts) == 2 and parts[0].isdigit() and parts[0].isascii():
        if len(parts[0]) > 10:
            # Bounded before int(): a peer must not make us convert a megabyte number.
            return "Bad CSeq: number out of range"
        if not is_token(parts[1]):
            return "Bad CSeq: method is not a token"
    return "Bad CSeq"


def echoed_fields(request: Request, to_value: str) -> list[Field]:
    """What a response to `request` copies from it (§8.2.6.2): every Via line in order,
    From, Call-ID and CSeq, with `to_value` as its To; written with the keys of the names
    we write (what Headers.of would look up)."""
    headers = request.headers
    fields: list[Field] = [("via", "Via", v, None) for v in headers.get_fields("via")]
    fields += [("from", "From", headers.get("from") or "", None), ("to", "To", to_value, None),
               ("call-id", "Call-ID", headers.get("call-id") or "", None),
               ("cseq", "CSeq", headers.get("cseq") or "", None)]
    return fields


def build_response(request: Request, status: int, reason: str | None = None, *,
                   to_tag: str | None = None, extra: tuple[tuple[str, str], ...] = (),
                   body: bytes = b"", content_type: str | None = None) -> Response:
    """A response to `request` per RFC 3261 §8.2.6.2: Via (all, in order), From, To, Call-ID
    and CSeq copied; a To tag added when given and absent (§8.2.6.2, not on 100 Trying)."""
    to_value = request.headers.get("to") or ""
    tagged: NameAddr | None = None
    if to_tag is not None and status > 100:
        try:
            to_addr = request.to                 # NameAddr.parse(to_value), kept
            if to_addr.tag is None:
                tagged = to_addr.with_tag(to_tag)
                to_value = str(tagged)
        except ParseError:
            pass
    fields = echoed_fields(request, to_value)
    if extra:
        fields += fields_of(extra)
    if content_type is not None:
        fields.append(("content-type", "Content-Type", content_type, None))
    fields.append(("content-length", "Content-Length", str(len(body)), None))
    headers = Headers.built(fields)
    # What the transaction layer reads of the response (To tag, CSeq, top Via) is what it
    # read of the request: shared, not parsed again.
    headers.share_parsed(request.headers, to=tagged)
    return Response(status, reason or REASONS.get(status, "Unknown"), headers, body)
