"""Bytes → Request / Response, and the stream framer for TCP.

`parse_message` takes one complete message (a UDP datagram, or what `StreamFramer` cut from
a TCP stream) and raises ParseError with a reason that names the problem; that reason
becomes the 400's reason phrase. `salvage` reads what it can from a message that failed to
parse, so the shell can still answer 400 when the Via is readable (RFC 3261 §8.2).
"""

from __future__ import annotations

from sipmask.errors import MessageTooLarge, ParseError
from sipmask.sip.headers import Headers, canonical, is_token
from sipmask.sip.message import SIP_VERSION, CSeq, Message, Request, Response
from sipmask.sip.uri import NameAddr, Via, parse_uri

DEFAULT_MAX_BYTES = 65535

# RFC 3261 §8.1.1: a request MUST hold these; without them it cannot be answered properly.
_REQUIRED = ("to", "from", "cseq", "call-id", "via")


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Header block (without the blank line) and the rest."""
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        return data[:end], data[end + 4:]
    # Be lenient with bare-LF senders (RFC 3261 §7.5 asks for CRLF, many old UAs send LF).
    end = data.find(b"\n\n")
    if end >= 0:
        return data[:end], data[end + 2:]
    raise ParseError("Missing blank line after headers")


def _lines(head: str) -> list[str]:
    return head.replace("\r\n", "\n").split("\n") if "\n" in head else [head]


def parse_message(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                  *, stream: bool = False) -> Request | Response:
    """Parse one message. `stream=True` (TCP) makes Content-Length mandatory (§18.3)."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"Message Too Large: over {max_bytes} bytes")
    # §7.5: implementations SHOULD ignore CRLFs before the start line.
    start = 0
    while data.startswith(b"\r\n", start) or data.startswith(b"\n", start):
        start += 2 if data.startswith(b"\r\n", start) else 1
    if start:
        data = data[start:]
    if not data:
        raise ParseError("Empty message")
    head_bytes, rest = _split_head(data)
    head = head_bytes.decode("utf-8", "surrogateescape")
    raw_lines = _lines(head)
    first = raw_lines[0]

    fields: list[tuple[str, str, str, str | None]] = []
    crlf = "\r\n" if b"\r\n" in head_bytes else "\n"
    for line in raw_lines[1:]:
        if line[:1] in (" ", "\t"):
            # §7.3.1 folding: a continuation line joins the previous value with one SP.
            if not fields:
                raise ParseError("Continuation line before any header")
            key, name, value, raw = fields[-1]
            joined = (value + " " + line.strip(" \t")).strip()
            fields[-1] = (key, name, joined, f"{raw}{crlf}{line}")
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise ParseError("Header line without a colon")
        name = name.rstrip(" \t")
        if not is_token(name):
            raise ParseError(f"Bad header name {name[:32]!r}")
        fields.append((canonical(name), name, value.strip(" \t"), line))
    if crlf == "\n":
        # Bare-LF input: rebuilt messages use CRLF, so nothing raw may be reused.
        fields = [(k, n, v, None) for k, n, v, _ in fields]
    headers = Headers(fields)

    body, used = _body(headers, rest, stream)
    raw = data[: len(data) - len(rest) + used] if crlf == "\r\n" else None
    msg: Message
    if first.startswith("SIP/"):
        msg = _response(first, headers, body, raw)
    else:
        msg = _request(first, headers, body, raw)
    return msg  # type: ignore[return-value]


def _body(headers: Headers, rest: bytes, stream: bool) -> tuple[bytes, int]:
    lengths = headers.get_fields("content-length")
    if not lengths:
        if stream:
            raise ParseError("Missing Content-Length on a stream transport")
        return rest, len(rest)
    if len(set(v.strip() for v in lengths)) > 1:
        raise ParseError("Conflicting Content-Length headers")
    text = lengths[0].strip()
    if not text.isdigit():
        raise ParseError("Bad Content-Length")
    n = int(text)
    if n > len(rest):
        raise ParseError("Content-Length larger than the body")
    # §18.3: over UDP, octets past Content-Length are discarded.
    return rest[:n], n


def _request(first: str, headers: Headers, body: bytes, raw: bytes | None) -> Request:
    parts = first.split(" ")
    if len(parts) != 3 or not all(parts):
        raise ParseError("Bad Request-Line")
    method, uri, version = parts
    if not is_token(method):
        raise ParseError("Bad method")
    if version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            raise ParseError("Version Not Supported", status=505)
        raise ParseError("Bad Request-Line: not SIP/2.0")
    parse_uri(uri)
    for key in _REQUIRED:
        if key not in headers:
            raise ParseError(f"Missing {_PRETTY[key]}")
    cseq = CSeq.parse(headers.get("cseq") or "")
    # RFC 4475 §3.1.2.14 / RFC 3261 §8.1.1.5: CSeq method must match the request method.
    if cseq.method != method:
        raise ParseError("CSeq method does not match the request")
    _check_common(headers)
    mf = headers.get("max-forwards")
    if mf is not None and (not mf.strip().isdigit() or int(mf) > 255):
        raise ParseError("Bad Max-Forwards")
    return Request(method, uri, headers, body, version, raw)


def _response(first: str, headers: Headers, body: bytes, raw: bytes | None) -> Response:
    parts = first.split(" ", 2)
    if len(parts) < 2:
        raise ParseError("Bad Status-Line")
    version, code = parts[0], parts[1]
    reason = parts[2] if len(parts) == 3 else ""
    if version.upper() != SIP_VERSION:
        raise ParseError("Bad Status-Line: not SIP/2.0")
    if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 699:
        raise ParseError("Bad status code")
    for key in _REQUIRED:
        if key not in headers:
            raise ParseError(f"Missing {_PRETTY[key]}")
    CSeq.parse(headers.get("cseq") or "")
    _check_common(headers)
    return Response(int(code), reason, headers, body, version, raw)


def _check_common(headers: Headers) -> None:
    """Headers whose syntax every transaction relies on must parse (§8.1.1, §20)."""
    for key in ("from", "to"):
        if len(headers.get_fields(key)) > 1:
            raise ParseError(f"Multiple {_PRETTY[key]} headers")
        NameAddr.parse(headers.get(key) or "")
    if len(headers.get_fields("call-id")) > 1:
        raise ParseError("Multiple Call-ID headers")
    if not (headers.get("call-id") or "").strip():
        raise ParseError("Empty Call-ID")
    for via in headers.get_all("via"):
        Via.parse(via)


_PRETTY = {"to": "To", "from": "From", "cseq": "CSeq", "call-id": "Call-ID", "via": "Via"}


def salvage(data: bytes) -> Headers | None:
    """Best-effort header read of a message that failed to parse: enough to build a 400
    when Via, From, To, Call-ID and CSeq are all readable, else None (drop it)."""
    try:
        head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    except Exception:  # pragma: no cover - decode with "replace" does not raise
        return None
    lines = _lines(head)
    if not lines or lines[0].startswith("SIP/"):
        return None  # never answer a response (§8.1.3.3 has no error path for them)
    pairs: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        key = canonical(name.strip())
        if colon and key in ("via", "from", "to", "call-id", "cseq"):
            pairs.append((name.strip(), value.strip()))
    headers = Headers.of(*pairs)
    try:
        if not headers.get_all("via"):
            return None
        Via.parse(headers.get_all("via")[0])
        for key in ("from", "to", "call-id", "cseq"):
            if not headers.get(key):
                return None
    except ParseError:
        return None
    return headers


class StreamFramer:
    """Cuts a TCP byte stream into messages by Content-Length (RFC 3261 §18.3).

    `feed(data)` returns the complete messages now available. Keep-alive CRLFs between
    messages (RFC 5626 §3.5.1) are skipped. A header block over `max_bytes` or a missing
    Content-Length raises ParseError; the connection cannot be resynchronised after that.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self.keepalives = 0

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
                self.keepalives += 1
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > self.max_bytes:
                    raise MessageTooLarge("Message Too Large: header block too long")
                return out
            length = _content_length(bytes(self._buf[:end]))
            total = end + 4 + length
            if total > self.max_bytes:
                raise MessageTooLarge(f"Message Too Large: over {self.max_bytes} bytes")
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]

    @property
    def buffered(self) -> int:
        return len(self._buf)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in (b"content-length", b"l"):
            text = value.strip()
            if not text.isdigit():
                raise ParseError("Bad Content-Length")
            return int(text)
    raise ParseError("Missing Content-Length on a stream transport")
