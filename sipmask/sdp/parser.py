"""Bytes → SessionDescription (RFC 4566 §5): the model parser, the test oracle of the call
path's reader (sdp/scan.py). No production code imports it (sdp/__init__.py says why).

Input may end its lines with CRLF or with a bare LF (RFC 4566 §5 allows parsers to accept
LF); output from `SessionDescription.to_bytes` is always CRLF. Empty lines (often a stray
CRLF after the last line) are skipped. Lines, order and port numbers: sdp/grammar.py.

What is refused (errors.ParseError, 400) is what sipmask must understand to rewrite the
body safely: v=0 first, one o= and at most one s= in the session section, well-formed o=,
c=, b= and m= lines, ports 0-65535, no NUL or bare CR inside a line. Lines sipmask does not
model are kept, not judged. Error reasons name the line number and type, never the text.
"""

from __future__ import annotations

from sipmask.errors import ParseError
from sipmask.sdp.grammar import bad_line, first_line, port_number, split_lines
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
    lines = split_lines(text)
    first = first_line(lines)

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
            raise bad_line(number, "not <type>=<value>")
        value = line[2:]
        if kind == "a":
            name, colon, rest = value.partition(":")
            if not name:
                raise bad_line(number, "a= without a name")
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
                raise bad_line(number, "b= is not <bwtype>:<bandwidth>")
            append(Bandwidth(bwtype, amount))
        elif kind not in "vos":
            append(Line(kind, value))
        elif kind == "v" or media:
            raise bad_line(number, f"{kind}= out of place")
        elif kind == "o":
            if origin is not None:
                raise bad_line(number, "second o= line")
            origin = _origin(value, number)
        else:
            if session_name is not None:
                raise bad_line(number, "second s= line")
            session_name = value

    if origin is None:
        raise ParseError("Bad SDP: no o= line")
    return SessionDescription(origin=origin, session_name=session_name, lines=session_lines,
                              media=media, version=0)


def _origin(value: str, number: int) -> Origin:
    fields = value.split()
    if len(fields) != 6:
        raise bad_line(number, "o= needs 6 fields")
    username, sess_id, sess_version, nettype, addrtype, address = fields
    return Origin(username, sess_id, sess_version, nettype, addrtype, address)


def _connection(value: str, number: int) -> Connection:
    fields = value.split()
    if len(fields) != 3:
        raise bad_line(number, "c= needs 3 fields")
    return Connection(*fields)


def _media(value: str, number: int) -> MediaDescription:
    # §5.14: m=<media> <port>[/<number of ports>] <proto> <fmt> ...; a rejected stream in an
    # answer sometimes arrives without formats, which is kept rather than refused.
    fields = value.split()
    if len(fields) < 3:
        raise bad_line(number, "m= needs media, port and proto")
    kind, port_text, proto, *formats = fields
    port_part, slash, count_part = port_text.partition("/")
    port = port_number(port_part, number)
    count = port_number(count_part, number) if slash else None
    return MediaDescription(kind=kind, port=port, proto=proto, formats=formats,
                            port_count=count)
