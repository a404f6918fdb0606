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
    lines = _split_lines(text)
    first = 0
    while first < len(lines) and not lines[first]:
        first += 1
    if first == len(lines):
        raise ParseError("Bad SDP: empty body")
    if lines[first] != "v=0":
        # §5.1: a description begins with v=, and v=0 is the only version.
        raise ParseError(f"Bad SDP: line {first + 1}: must begin with v=0")

    origin: Origin | None = None
    session_name: str | None = None
    session_lines: list[SdpLine] = []
    media: list[MediaDescription] = []
    current = session_lines
    append = current.append
    # The branches run most-frequent first: a= lines are most of any SDP.
    for number, line in enumerate(lines[first + 1:], start=first + 2):
        if not line:
            continue
        kind = line[0]
        if line[1:2] != "=":
            # §5: "<type>=<value>", one-letter type, no space around "=".
            raise ParseError(f"Bad SDP: line {number}: not <type>=<value>")
        value = line[2:]
        if kind == "a":
            name, colon, rest = value.partition(":")
            if not name:
                raise ParseError(f"Bad SDP: line {number}: a= without a name")
            append(Attribute(name, rest if colon else None))
        elif kind == "c":
            append(_connection(value, number))
        elif kind == "m":
            section = _media(value, number)
            media.append(section)
            current = section.lines
            append = current.append
        elif kind == "b":
            bwtype, colon, amount = value.partition(":")
            if not colon or not bwtype:
                raise ParseError(f"Bad SDP: line {number}: b= is not <bwtype>:<bandwidth>")
            append(Bandwidth(bwtype, amount))
        elif kind not in "vos":
            append(Line(kind, value))
        elif kind == "v" or media:
            raise ParseError(f"Bad SDP: line {number}: {kind}= out of place")
        elif kind == "o":
            if origin is not None:
                raise ParseError(f"Bad SDP: line {number}: second o= line")
            origin = _origin(value, number)
        else:
            if session_name is not None:
                raise ParseError(f"Bad SDP: line {number}: second s= line")
            session_name = value

    if origin is None:
        raise ParseError("Bad SDP: no o= line")
    return SessionDescription(origin=origin, session_name=session_name, lines=session_lines,
                              media=media, version=0)


def _split_lines(text: str) -> list[str]:
    """Lines without their CRLF or LF ends. RFC 4566 §9: text excludes NUL, CR and LF, so
    a NUL or a CR not followed by LF is refused. The checks run on the whole text first;
    the line-by-line search only runs to name the bad line."""
    crlf = text.count("\r\n")
    if crlf == text.count("\n"):
        lines = text.split("\r\n")
        clean = crlf == text.count("\r")
    else:
        lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
        clean = not any("\r" in line for line in lines)
    if clean and "\x00" not in text:
        return lines
    for number, line in enumerate(lines, start=1):
        if "\r" in line or "\x00" in line:
            raise ParseError(f"Bad SDP: line {number}: NUL or CR inside a line")
    raise AssertionError("unreachable: a NUL or CR was seen above")


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
