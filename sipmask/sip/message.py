"""SIP requests and responses.

A parsed message remembers the bytes it came from; while nothing is changed, `to_bytes()`
returns them unchanged. Once a header, the start line or the body changes, the message is
rebuilt from its fields, and fields that were not changed still keep their original text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sipmask.errors import ParseError
from sipmask.sip.headers import Headers, is_token
from sipmask.sip.uri import NameAddr, Uri, Via, parse_uri

SIP_VERSION = "SIP/2.0"
T = TypeVar("T")

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


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        parts = text.split()
        if len(parts) != 2 or not parts[0].isdigit() or not parts[0].isascii():
            raise ParseError("Bad CSeq")
        if not is_token(parts[1]):
            raise ParseError("Bad CSeq: method is not a token")
        # Bound the digits before int(): a peer must not make us convert a megabyte number.
        if len(parts[0]) > 10:
            raise ParseError("Bad CSeq: number out of range")
        number = int(parts[0])
        # RFC 3261 §8.1.1.5: the sequence number MUST be less than 2**31.
        if number >= 2**31:
            raise ParseError("Bad CSeq: number out of range")
        return cls(number, parts[1])

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


class Message:
    """What requests and responses share: headers, body, original bytes.

    Every attribute that is written on the wire is a property whose setter drops the
    original bytes, so `to_bytes()` can never send stale text after a change."""

    __slots__ = ("_body", "_headers", "_parsed", "_raw", "_version")

    def __init__(self, headers: Headers, body: bytes = b"", version: str = SIP_VERSION,
                 raw: bytes | None = None) -> None:
        self._headers = headers
        self._body = body
        self._version = version
        self._raw = raw
        self._parsed: dict[str, tuple[str, Any]] | None = None

    @property
    def headers(self) -> Headers:
        return self._headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers = value
        self._raw = None

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
        return self._raw if not self._headers.modified else None

    # -- body ---------------------------------------------------------------------------
    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self._raw = None

    # -- the fields every transaction and dialog reads ---------------------------------
    @property
    def call_id(self) -> str:
        value = self.headers.get("call-id")
        if value is None:
            raise ParseError("Missing Call-ID")
        return value

    def _parse_once(self, key: str, text: str, parse: Callable[[str], T]) -> T:
        """`parse(text)`, remembered while the field still holds `text`: the transaction
        layer, the dialogs and the engine each read From, To, CSeq and Via of a message
        several times. The values are shared, so nobody changes them in place (with_tag
        and with_params build new ones)."""
        parsed = self._parsed
        if parsed is None:
            parsed = self._parsed = {}
        known = parsed.get(key)
        if known is not None and known[0] == text:
            value: T = known[1]
            return value
        value = parse(text)
        parsed[key] = (text, value)
        return value

    @property
    def cseq(self) -> CSeq:
        value = self.headers.get("cseq")
        if value is None:
            raise ParseError("Missing CSeq")
        return self._parse_once("cseq", value, CSeq.parse)

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("via")]

    @property
    def top_via(self) -> Via:
        values = self.headers.get_all("via")
        if not values:
            raise ParseError("Missing Via")
        return self._parse_once("via", values[0], Via.parse)

    @property
    def from_(self) -> NameAddr:
        value = self.headers.get("from")
        if value is None:
            raise ParseError("Missing From")
        return self._parse_once("from", value, NameAddr.parse)

    @property
    def to(self) -> NameAddr:
        value = self.headers.get("to")
        if value is None:
            raise ParseError("Missing To")
        return self._parse_once("to", value, NameAddr.parse)

    @property
    def content_type(self) -> str | None:
        value = self.headers.get("content-type")
        return None if value is None else value.split(";", 1)[0].strip().lower()

    # -- serialization -------------------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        if self._raw is not None and not self._headers.modified:
            return self._raw
        # Content-Length always tells the truth about the body we send (§20.14); on a
        # stream transport it is how the peer finds the end of the message (§18.3).
        length = str(len(self._body))
        if self.headers.get("content-length") != length:
            self.headers.set("Content-Length", length)
        head = self.start_line() + "\r\n" + self.headers.serialize() + "\r\n"
        return head.encode("utf-8", "surrogateescape") + self._body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    __slots__ = ("_method", "_uri")

    def __init__(self, method: str, uri: str, headers: Headers, body: bytes = b"",
                 version: str = SIP_VERSION, raw: bytes | None = None) -> None:
        self._headers = headers
        self._body = body
        self._version = version
        self._raw = raw
        self._parsed: dict[str, tuple[str, Any]] | None = None
        self._method = method
        self._uri = uri

    @property
    def method(self) -> str:
        return self._method

    @method.setter
    def method(self, value: str) -> None:
        self._method = value
        self._raw = None

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
        return f"{self._method} {self._uri} {self._version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} call-id={self.headers.get('call-id')}>"


class Response(Message):
    __slots__ = ("_reason", "_status")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes = b"",
                 version: str = SIP_VERSION, raw: bytes | None = None) -> None:
        self._headers = headers
        self._body = body
        self._version = version
        self._raw = raw
        self._parsed: dict[str, tuple[str, Any]] | None = None
        self._status = status
        self._reason = reason

    @property
    def status(self) -> int:
        return self._status

    @status.setter
    def status(self, value: int) -> None:
        self._status = value
        self._raw = None

    @property
    def reason(self) -> str:
        return self._reason

    @reason.setter
    def reason(self, value: str) -> None:
        self._reason = value
        self._raw = None

    def start_line(self) -> str:
        return f"{self._version} {self._status} {self._reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} call-id={self.headers.get('call-id')}>"


def build_response(request: Request, status: int, reason: str | None = None, *,
                   to_tag: str | None = None, extra: tuple[tuple[str, str], ...] = (),
                   body: bytes = b"", content_type: str | None = None) -> Response:
    """A response to `request` per RFC 3261 §8.2.6.2: Via (all, in order), From, To, Call-ID
    and CSeq copied; a To tag added when given and absent (§8.2.6.2, not on 100 Trying)."""
    pairs: list[tuple[str, str]] = [("Via", v) for v in request.headers.get_fields("via")]
    from_value = request.headers.get("from") or ""
    to_value = request.headers.get("to") or ""
    if to_tag is not None and status > 100:
        try:
            to_addr = NameAddr.parse(to_value)
            if to_addr.tag is None:
                to_value = str(to_addr.with_tag(to_tag))
        except ParseError:
            pass
    pairs += [("From", from_value), ("To", to_value),
              ("Call-ID", request.headers.get("call-id") or ""),
              ("CSeq", request.headers.get("cseq") or "")]
    pairs.extend(extra)
    if content_type is not None:
        pairs.append(("Content-Type", content_type))
    pairs.append(("Content-Length", str(len(body))))
    return Response(status, reason or REASONS.get(status, "Unknown"), Headers.of(*pairs), body)
