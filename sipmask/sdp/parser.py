"""Bytes → SessionDescription (RFC 4566 §5).

Input may end its lines with CRLF or with a bare LF (RFC 4566 §5 allows parsers to accept
LF); output from `SessionDescription.to_bytes` is always CRLF. Empty lines (often a stray
CRLF after the last line) are skipped.

What is refused (errors.ParseError, 400) is what sipmask must understand to rewrite the
body safely: v=0 first, one o= and at most one s= in the session section, well-formed o=,
c=, b= and m= lines, ports 0-65535, no NUL or bare CR inside a line. Lines sipmask does not
model are kept, not judged. Error reasons name the line number and type, never the text.
"""

from __future__ import annotations

from sipmask.errors import ParseError
from sipmask.sdp.model import (
    Attribute,
    Bandwidth,
    Connection,
    Line,
    MediaDescription,
    Origin,
    SdpLine,
    SessionDescription,
)


def parse(data: bytes) -> SessionDescription:
    """Parse one SDP body. Raises ParseError naming the first bad line."""
    # RFC 4566 §5: text is UTF-8 unless a=charset says otherwise; surrogateescape carries
    # any other byte through to `to_bytes` unchanged instead of refusing the call.
    text = data.decode("utf-8", "surrogateescape")
    version: int | None = None
    origin: Origin | None = None
    session_name: str | None = None
    session_lines: list[SdpLine] = []
    media: list[MediaDescription] = []
    current: list[SdpLine] = session_lines

    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line:
            continue
        if "\r" in line or "\x00" in line:
            # RFC 4566 §9: text fields exclude NUL, CR and LF.
            raise ParseError(f"Bad SDP: line {number}: NUL or CR inside a line")
        if len(line) < 2 or line[1] != "=":
            # §5: "<type>=<value>", one-letter type, no space around "=".
            raise ParseError(f"Bad SDP: line {number}: not <type>=<value>")
        kind, value = line[0], line[2:]
        if version is None:
            # §5.1: a description begins with v=, and v=0 is the only version.
            if kind != "v" or value != "0":
                raise ParseError(f"Bad SDP: line {number}: must begin with v=0")
            version = 0
            continue
        if kind in "vos" and (kind == "v" or current is not session_lines):
            raise ParseError(f"Bad SDP: line {number}: {kind}= out of place")
        if kind == "o":
            if origin is not None:
                raise ParseError(f"Bad SDP: line {number}: second o= line")
            origin = _origin(value, number)
        elif kind == "s":
            if session_name is not None:
                raise ParseError(f"Bad SDP: line {number}: second s= line")
            session_name = value
        elif kind == "m":
            section = _media(value, number)
            media.append(section)
            current = section.lines
        elif kind == "a":
            name, colon, rest = value.partition(":")
            if not name:
                raise ParseError(f"Bad SDP: line {number}: a= without a name")
            current.append(Attribute(name, rest if colon else None))
        elif kind == "c":
            current.append(_connection(value, number))
        elif kind == "b":
            bwtype, colon, amount = value.partition(":")
            if not colon or not bwtype:
                raise ParseError(f"Bad SDP: line {number}: b= is not <bwtype>:<bandwidth>")
            current.append(Bandwidth(bwtype, amount))
        else:
            current.append(Line(kind, value))

    if version is None:
        raise ParseError("Bad SDP: empty body")
    if origin is None:
        raise ParseError("Bad SDP: no o= line")
    return SessionDescription(origin=origin, session_name=session_name, lines=session_lines,
                              media=media, version=version)


def _origin(value: str, number: int) -> Origin:
    fields = value.split()
    if len(fields) != 6:
        raise ParseError(f"Bad SDP: line {number}: o= needs 6 fields")
    username, sess_id, sess_version, nettype, addrtype, address = fields
    return Origin(username, sess_id, sess_version, nettype, addrtype, address)


def _connection(value: str, number: int) -> Connection:
    fields = value.split()
    if len(fields) != 3:
        raise ParseError(f"Bad SDP: line {number}: c= needs 3 fields")
    return Connection(*fields)


def _media(value: str, number: int) -> MediaDescription:
    # §5.14: m=<media> <port>[/<number of ports>] <proto> <fmt> ...; a rejected stream in an
    # answer sometimes arrives without formats, which is kept rather than refused.
    fields = value.split()
    if len(fields) < 3:
        raise ParseError(f"Bad SDP: line {number}: m= needs media, port and proto")
    kind, port_text, proto, *formats = fields
    port_part, slash, count_part = port_text.partition("/")
    port = _number(port_part, 65535, number)
    count = _number(count_part, 65535, number) if slash else None
    return MediaDescription(kind=kind, port=port, proto=proto, formats=formats,
                            port_count=count)


def _number(text: str, limit: int, number: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or int(text) > limit:
        raise ParseError(f"Bad SDP: line {number}: m= port is not 0-{limit}")
    return int(text)
