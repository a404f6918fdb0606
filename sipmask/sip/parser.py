"""Bytes → Request / Response, and the stream framer for TCP.

`parse_message` takes one complete message (a UDP datagram, or what `StreamFramer` cut from
a TCP stream) and raises ParseError with a reason that names the problem; that reason
becomes the 400's reason phrase. `salvage` reads what it can from a message that failed to
parse, so the shell can still answer 400 when the Via is readable (RFC 3261 §8.2).

What is checked here is what every later layer relies on: the start line, the five headers
RFC 3261 §8.1.1 requires (present, single where single-valued, well-formed), Max-Forwards,
Contact and Content-Length. RFC 4475 §3.1.2 is the reference for what must be refused.

There is one path, and it depends on nothing but the bytes given: the header block is cut
with C-level `str.split` and `str.partition` over `map`, folded lines are joined (§7.3.1),
all the names are checked as tokens in one regex call, and the values every later layer
relies on (From, To, CSeq, each Via, each Contact, the Request-URI) are checked with the
patterns of `uri.py` and `message.py`, which all come from `grammar.py`. The CSeq and top
Via, which the transaction layer reads for every message, are kept on the Headers
(`Headers.keep_parsed`), and so are the matches of From and To, which are built into values
only when read.
"""

from __future__ import annotations

import re
from itertools import repeat

from sipmask.errors import MessageTooLarge, ParseError
from sipmask.sip import grammar
from sipmask.sip.headers import KNOWN_NAMES, Headers, canonical, is_token, split_commas
from sipmask.sip.message import SIP_VERSION, CSeq, Request, Response
from sipmask.sip.methods import KNOWN_METHODS
from sipmask.sip.uri import (
    NameAddrMatch,
    Via,
    check_name_addr,
    check_uri,
    check_via,
    match_name_addr,
)

DEFAULT_MAX_BYTES = 65535

# RFC 3261 §8.1.1: a request MUST hold these; without them it cannot be answered properly.
_REQUIRED = ("to", "from", "cseq", "call-id", "via")
_REQUIRED_SET = frozenset(_REQUIRED)
_PRETTY = {"to": "To", "from": "From", "cseq": "CSeq", "call-id": "Call-ID", "via": "Via",
           "content-length": "Content-Length"}

# The names of a header block, one a line (§7.3: field-name = token); names written with
# the whitespace HCOLON allows before the colon are checked once it is taken off.
_FIELD_NAMES = re.compile("(?:" + grammar.FIELD_NAME + "\n)*+" + grammar.FIELD_NAME)
# A method is a token (§25.1 Method): the ones sipmask knows (sip/methods.py, each a token,
# checked there) need no match.
_METHOD = re.compile(grammar.METHOD)

def parse_message(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES,
                  *, stream: bool = False) -> Request | Response:
    """Parse one message. `stream=True` (TCP) makes Content-Length mandatory (§18.3)."""
    if len(data) > max_bytes:
        raise MessageTooLarge(f"Message Too Large: over {max_bytes} bytes")
    if data.startswith((b"\r", b"\n")):
        # §7.5: implementations SHOULD ignore CRLFs before the start line.
        data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    body_start = end + 4
    crlf = end >= 0
    if not crlf:
        # Be lenient with bare-LF senders (§7.5 asks for CRLF, some old UAs send LF).
        end = data.find(b"\n\n")
        if end < 0:
            if not data:
                raise ParseError("Empty message")
            raise ParseError("Missing blank line after headers")
        body_start = end + 2
    head = data[:end].decode("utf-8", "surrogateescape")
    if crlf:
        lines = head.split("\r\n")
        # A lone CR or LF inside a field would let a value smuggle a header line into a
        # message we build from it: the lines must hold neither (two memchr scans of
        # their join are cheaper than counting each character of the head).
        joined = "".join(lines)
        if "\n" in joined:
            crlf = False                    # bare LFs among the CRLFs: split on LF below
        elif "\r" in joined:
            raise ParseError("Bare CR in header")
    if not crlf:
        lines = [line[:-1] if line.endswith("\r") else line for line in head.split("\n")]
        if any("\r" in line for line in lines):
            raise ParseError("Bare CR in header")
    first = lines[0]
    del lines[0]
    # -- header lines (§7.3): name HCOLON value ---------------------------------------------
    raws = lines
    if lines:
        # (strict=False: every list zipped in this module is as long as the others by
        # construction, one item a header line, and the check costs per message)
        names, colons, parts = zip(*map(str.partition, lines, repeat(":")), strict=False)
        if "" in colons or not (KNOWN_NAMES.issuperset(names)
                                or _FIELD_NAMES.fullmatch("\n".join(names))):
            # Folded lines or WSP before a colon, which the checks do not take as they
            # are (or an error): undo them and check again.
            lines, raws, names, parts = _normalised(lines)
        keys = list(map(canonical, names))
        # The text after each colon: its outer whitespace is taken off where it is read
        # (the grammar's rules allow it around the values they match).
        values = list(parts)
    else:
        names, keys, values = (), [], []

    # -- body: Content-Length (§20.14, §18.3) ------------------------------------------------
    lengths = keys.count("content-length")
    if lengths:
        length = _content_length(
            values[keys.index("content-length")] if lengths == 1 else
            [v for k, v in zip(keys, values, strict=False) if k == "content-length"])
        available = len(data) - body_start
        if length > available:
            # §18.3: a datagram that ends before the body does is an error (400 for a
            # request, dropped for a response).
            raise ParseError("Content-Length larger than the body")
        if length == available:
            body = data[body_start:]
            raw: bytes | None = data
        else:
            # §18.3: over UDP, octets past Content-Length are discarded.
            body = data[body_start: body_start + length]
            raw = data[: body_start + length]
    else:
        if stream:
            raise ParseError("Missing Content-Length on a stream transport")
        body = data[body_start:]
        raw = data
    if not crlf:
        raw = None  # rebuilt messages use CRLF, so the original bytes are never reused
    headers = Headers.parsed(keys, names, values, raws if crlf else None)
    if first.startswith("SIP/"):
        return _response(first, headers, keys, values, body, raw)
    return _request(first, headers, keys, values, body, raw)


def _normalised(lines: list[str]
                ) -> tuple[list[str], list[str], tuple[str, ...], tuple[str, ...]]:
    """The header lines with §7.3.1 folding undone and the WSP HCOLON allows before a
    colon taken off the names, checked as `parse_message` checks them; ParseError naming
    the first line that still fails. Returns the logical lines, the raw text of each, the
    names and the unstripped values."""
    if lines[0][:1] in (" ", "\t"):
        raise ParseError("Continuation line before any header")
    lines, raws = _unfold(lines)
    names, colons, parts = zip(*map(str.partition, lines, repeat(":")), strict=False)
    if "" in colons:
        raise ParseError("Header line without a colon")
    names = tuple(map(str.rstrip, names, repeat(" \t")))
    if _FIELD_NAMES.fullmatch("\n".join(names)) is None:
        bad = next(name for name in names if not is_token(name))
        raise ParseError(f"Bad header name {bad[:32]!r}")
    return lines, raws, names, parts


def _unfold(lines: list[str]) -> tuple[list[str], list[str]]:
    """§7.3.1 folding: a line starting with SP or HT continues the one before; the value
    reads as if the line break and the whitespace around it were one SP. Returns the
    logical lines and, for each, the raw text it came as (line breaks included)."""
    logical: list[str] = []
    raws: list[str] = []
    for line in lines:
        if line[:1] in (" ", "\t") and raws:
            raws[-1] += "\r\n" + line
            logical[-1] = logical[-1].rstrip(" \t") + " " + line.strip(" \t")
        else:
            raws.append(line)
            logical.append(line)
    return logical, raws


def _content_length(values: str | list[str]) -> int:
    """The body length the Content-Length lines say (§20.14; their values as they follow
    the colon, one or a list): one number, or several that agree (RFC 4475 §3.3.9 refuses
    two different ones)."""
    if isinstance(values, str):
        text = values.strip(" \t")
    else:
        text = values[0].strip(" \t")
        if any(value.strip(" \t") != text for value in values):
            raise ParseError("Conflicting Content-Length headers")
    if not (text.isdigit() and text.isascii()) or len(text) > 10:
        raise ParseError("Bad Content-Length")
    return int(text)


def _request(first: str, headers: Headers, keys: list[str], values: list[str], body: bytes,
             raw: bytes | None) -> Request:
    parts = first.split(" ")
    if len(parts) != 3 or not all(parts):
        # RFC 4475 §3.1.2.8-10: LWS inside the Request-URI, extra SP, trailing SP → 400.
        raise ParseError("Bad Request-Line")
    method, uri, version = parts
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        if version.upper().startswith("SIP/"):
            # RFC 3261 §8.2.1 / RFC 4475 §3.1.2.16.
            raise ParseError("Version Not Supported", status=505)
        raise ParseError("Bad Request-Line: not SIP/2.0")
    if method not in KNOWN_METHODS and _METHOD.fullmatch(method) is None:
        raise ParseError("Bad method")
    if check_uri(uri):
        # RFC 3261 §19.1.1 table 1: headers are not allowed in a Request-URI
        # (RFC 4475 §3.1.2.11 escruri: 400).
        raise ParseError("Bad Request-URI: headers are not allowed")
    cseq = _check_required(headers, keys, values)
    # RFC 3261 §8.1.1.5 / RFC 4475 §3.1.2.17-18: CSeq method must match the request.
    if cseq.method != method:
        raise ParseError("CSeq method does not match the request")
    if "max-forwards" in keys:
        mf = values[keys.index("max-forwards")].strip(" \t")
        # §20.22: 0-255; RFC 4475 §3.1.2.4 refuses 300. Leading zeros are fine (wsinv).
        if not (mf.isdigit() and mf.isascii()) or len(mf) > 10 or int(mf) > 255:
            raise ParseError("Bad Max-Forwards")
    return Request(method, uri, headers, body, version, raw)


def _response(first: str, headers: Headers, keys: list[str], values: list[str], body: bytes,
              raw: bytes | None) -> Response:
    parts = first.split(" ", 2)
    if len(parts) < 2:
        raise ParseError("Bad Status-Line")
    version, code = parts[0], parts[1]
    reason = parts[2] if len(parts) == 3 else ""
    if version != SIP_VERSION and version.upper() != SIP_VERSION:
        raise ParseError("Bad Status-Line: not SIP/2.0")
    # §7.2 Status-Code = 3DIGIT, 100-699 (RFC 4475 §3.1.2.19 bigcode is dropped).
    if len(code) != 3 or not (code.isdigit() and code.isascii()) or not 100 <= int(code) <= 699:
        raise ParseError("Bad status code")
    _check_required(headers, keys, values)
    return Response(int(code), reason, headers, body, version, raw)


def _check_required(headers: Headers, keys: list[str], values: list[str]) -> CSeq:
    """The §8.1.1 headers are present, single where single-valued, and parse; so do Via
    and Contact (RFC 4475 §3.1.2.1, §3.1.2.6, §3.1.2.13-15, §3.3.1, §3.3.8). What was
    parsed is kept on `headers`; returns the CSeq."""
    present = set(keys)
    if not present >= _REQUIRED_SET:
        for key in _REQUIRED:
            if key not in present:
                raise ParseError(f"Missing {_PRETTY[key]}")
    index = keys.index
    if len(present) == len(keys):                 # every name once: the common case
        vias = [values[index("via")].strip(" \t")]
        contacts = [values[index("contact")].strip(" \t")] if "contact" in present else []
    else:
        for key in ("from", "to", "call-id", "cseq"):
            if keys.count(key) > 1:
                raise ParseError(f"Multiple {_PRETTY[key]} headers")
        vias = [v.strip(" \t") for k, v in zip(keys, values, strict=False) if k == "via"]
        contacts = [v.strip(" \t") for k, v in zip(keys, values, strict=False)
                    if k == "contact"]
    # §8.1.1.2-3: From and To are checked here and built from these matches when a layer
    # reads them (most messages are matched on the Via branch and CSeq alone). Their rules
    # and CSeq's take the whitespace around a value (SWS).
    from_ = match_name_addr(values[index("from")])
    to = match_name_addr(values[index("to")])
    if not values[index("call-id")].strip(" \t"):
        raise ParseError("Empty Call-ID")
    top_via: Via | None = None
    for value in vias:
        parms = split_commas(value) if "," in value else [value] if value else []
        if not parms:
            raise ParseError("Empty Via")
        if top_via is None:
            top_via = Via.parse(parms[0])
            del parms[0]
        for parm in parms:
            check_via(parm)
    # The first Contact value is kept (a dialog's remote target, §12.1), the others checked.
    contact: NameAddrMatch | None = None
    first = True
    for value in contacts:
        if value == "*":
            first = False
            continue
        for addr in split_commas(value) if "," in value else [value]:
            if first:
                contact = match_name_addr(addr)
                first = False
            else:
                check_name_addr(addr)
    cseq = CSeq.parse(values[index("cseq")])
    assert top_via is not None                    # "via" is present, and not empty
    headers.keep_parsed(cseq, top_via, from_, to, contact)
    return cseq


def salvage(data: bytes) -> Headers | None:
    """Best-effort header read of a message that failed to parse: enough to build a 400
    when Via, From, To, Call-ID and CSeq are all readable, else None (drop it)."""
    data = data.lstrip(b"\r\n")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = (data if end < 0 else data[:end]).decode("utf-8", "replace")
    lines = [line.rstrip("\r") for line in head.split("\n")]
    if not lines or lines[0].startswith("SIP/"):
        return None  # never answer a response (§8.1.3.3 has no error path for them)
    logical, _raws = _unfold(lines[1:])
    pairs: list[tuple[str, str]] = []
    for line in logical:
        name, colon, value = line.partition(":")
        name = name.strip(" \t")
        if colon and canonical(name) in _REQUIRED_SET:
            pairs.append((name, value.strip(" \t")))
    headers = Headers.of(*pairs)
    try:
        vias = headers.get_all("via")
        if not vias:
            return None
        Via.parse(vias[0])
        for key in ("from", "to", "call-id", "cseq"):
            if not headers.get(key):
                return None
    except ParseError:
        return None
    return headers


class StreamFramer:
    """Cuts a TCP byte stream into messages by Content-Length (RFC 3261 §18.3).

    `feed(data)` returns the complete messages now available. Keep-alive CRLFs between
    messages (RFC 5626 §3.5.1) are skipped and counted in `keepalives`; a double-CRLF ping
    should be answered with a single-CRLF pong (RFC 5626 §4.4.1): `take_pings()` says how
    many are due. A header block over `max_bytes`, a missing or bad Content-Length raises
    ParseError; the connection cannot be resynchronised after that.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._need = -1          # total length of the message being read, once known
        self._scanned = 0        # bytes of the header block already searched for CRLFCRLF
        self._crlf_run = 0       # CRLFs seen since the last message or ping
        self._pings = 0
        self.keepalives = 0

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while True:
            if self._need < 0:
                if self._scanned == 0:
                    skip = 0
                    while buf.startswith(b"\r\n", skip):
                        skip += 2
                    if skip:
                        del buf[:skip]
                        self._count_crlfs(skip // 2)
                    if not buf or buf == b"\r":
                        return out
                end = buf.find(b"\r\n\r\n", self._scanned)
                if end < 0:
                    if len(buf) > self.max_bytes:
                        raise MessageTooLarge("Message Too Large: header block too long")
                    self._scanned = max(0, len(buf) - 3)
                    return out
                self._scanned = 0
                self._crlf_run = 0
                total = end + 4 + _stream_length(bytes(buf[:end]))
                if total > self.max_bytes:
                    raise MessageTooLarge(f"Message Too Large: over {self.max_bytes} bytes")
                self._need = total
            if len(buf) < self._need:
                return out
            out.append(bytes(buf[: self._need]))
            del buf[: self._need]
            self._need = -1

    def take_pings(self) -> int:
        """How many CRLFCRLF pings arrived since the last call (each wants a CRLF pong)."""
        pings, self._pings = self._pings, 0
        return pings

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _count_crlfs(self, n: int) -> None:
        self.keepalives += n
        self._crlf_run += n
        self._pings += self._crlf_run // 2
        self._crlf_run %= 2


def _stream_length(head: bytes) -> int:
    """The body length a TCP message's header block (start line first) gives, read with
    the parser's own rules (`_unfold`, `canonical`, `_content_length`), so the framer and
    `parse_message` always agree on it. Only Content-Length lines are looked at: whatever
    else is wrong with the message is for `parse_message` to answer."""
    lines = head.decode("utf-8", "surrogateescape").split("\r\n")
    del lines[0]
    logical, _raws = _unfold(lines)
    found = [value.strip(" \t") for name, colon, value in map(str.partition, logical, repeat(":"))
             if colon and canonical(name.rstrip(" \t")) == "content-length"]
    if not found:
        raise ParseError("Missing Content-Length on a stream transport")
    return _content_length(found)
