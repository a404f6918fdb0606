"""The SDP path of every call, on the lines as text: read a body once, check it, tell where
its media goes and whether it is on hold, and write the body for the other leg.

`scan` reads a body into a `Scan`: the checks RFC 4566 asks (400 with the bad line's number,
sdp/grammar.py), the facts `media_endpoints` and `is_on_hold` read, and the lines that cross
(sdp/privacy.py decides which) kept verbatim, in input order, with slots for what names the
relay. `rewrite` fills in the relay's c=, a=rtcp and m= ports, sipmask's o= (sdp/origin.py),
and writes the lines in RFC 4566 §5 order. No object is built per line: the SDP work of a
call is 2.4x less than parsing into the data model and rendering it back, about 6 % of a
call's CPU (bench/sdp.py --in-call), which is why it exists beside the model.

Its test oracle is the data model: sdp/parser.py → sdp/model.py → sdp/rewrite.py must give
the same endpoints, hold answers, bytes, o= versions and refusals for every body
(tests/unit/sdp/test_sdp_oracle.py, tests/property/test_sdp_roundtrip.py).
"""

from __future__ import annotations

from typing import NamedTuple

from sipmask.errors import ParseError
from sipmask.sdp.endpoints import DIRECTIONS, Direction, MediaEndpoint, media_endpoint
from sipmask.sdp.errors import SdpError
from sipmask.sdp.grammar import (
    MEDIA_ORDER,
    SESSION_ORDER,
    bad_line,
    first_line,
    port_number,
    split_lines,
)
from sipmask.sdp.origin import OriginCounter
from sipmask.sdp.privacy import (
    HOLD_HOSTS,
    ICE_MARKERS,
    SESSION_NAME,
    Fate,
    Section,
    attribute_fates,
    group_crosses,
    line_fate,
    relay_connection,
)


class Part(NamedTuple):
    """The session section (port -1) or one m= section, read for the relay rewrite."""

    port: int
    port_count: int | None
    m_kind: str                 # "m=<media> " (the port goes after it)
    m_rest: str                 # " <proto> <fmt> ..."
    proto: str                  # the m= line's proto ("" for the session section)
    rtcp: str | None            # the value of the first a=rtcp, or None
    host: str | None            # the first c= host (multicast suffix dropped), or None
    unspecified: bool           # that c= is 0.0.0.0 or :: (RFC 3264 §8.4 hold)
    direction: Direction | None   # the first direction attribute, or None
    ice: bool                   # an ICE attribute is in this section
    lines: tuple[str, ...]      # the kept lines in input order, the first c= normalised
    connection_at: int          # where the relay c= goes in `lines`, or -1
    rtcp_at: tuple[int, ...]    # a=rtcp lines, held as "a=<name>:" for the relay value
    ordered: bool               # `lines` are already in RFC 4566 §5 order


class Scan(NamedTuple):
    session: Part
    media: tuple[Part, ...]
    only_in: bool               # o= and every c= have nettype IN
    ice: bool                   # any section carries ICE attributes (uses_ice)


# Per section, what an a= line's name says (sdp/privacy.py decides its fate), by the name as
# sent and in lower case, so a lower-case name costs one lookup: its fate, whether it marks
# ICE, and the direction it names.
Facts = tuple[Fate, bool, Direction | None]
_DROPPED: Facts = (Fate.DROP, False, None)


def _facts(section: Section) -> dict[str, Facts]:
    fates = attribute_fates(section)
    return {name: (fates.get(name, Fate.DROP), name in ICE_MARKERS, DIRECTIONS.get(name))
            for name in fates.keys() | ICE_MARKERS | DIRECTIONS.keys()}


_FACTS = {section: _facts(section) for section in Section}
# The fates the line loop tests and the sections it enters, as module names: Python 3.11
# looks an attribute of an enum class up through its metaclass on every read.
_KEEP, _RELAY, _GROUP = Fate.KEEP, Fate.RELAY, Fate.GROUP
_SESSION, _ACTIVE, _DISABLED = Section.SESSION, Section.ACTIVE, Section.DISABLED
_SENDRECV = Direction.SENDRECV


def scan(data: bytes) -> Scan:
    """Read one body. Raises ParseError (400) naming the first bad line: what is refused is
    what sipmask must understand to rewrite the body safely (v=0 first, one o= and at most
    one s= in the session section, well-formed o=, c=, b= and m= lines, ports 0-65535, no
    NUL or bare CR inside a line). Lines sipmask does not read are not judged."""
    # RFC 4566 §5: text is UTF-8 unless a=charset says otherwise; surrogateescape carries
    # any other byte through to the rewritten body unchanged instead of refusing the call.
    text = data.decode("utf-8", "surrogateescape")
    lines = split_lines(text)
    first = first_line(lines)

    section = _SESSION
    classes = _FACTS[section]
    parts: list[Part] = []          # the session section, then one per m= line
    has_origin = has_name = False
    only_in = True
    # The section being read.
    port = -1
    port_count: int | None = None
    m_kind = m_rest = ""
    host: str | None = None
    unspecified = False
    found: Direction | None = None
    ice = False
    kept: list[str] = ["c="]        # the session c= slot comes first, always
    connection_at = 0
    rtcp_at: list[int] = []
    rtcp: str | None = None
    proto = ""
    has_time = False

    # The branches run most-frequent first: a= lines are most of any SDP.
    for number, line in enumerate(lines[first + 1:], start=first + 2):
        if not line:
            continue
        if line[1:2] != "=":
            # §5: "<type>=<value>", one-letter type, no space around "=".
            raise bad_line(number, "not <type>=<value>")
        kind = line[0]
        if kind == "a":
            name, colon, value = line[2:].partition(":")
            if not name:
                raise bad_line(number, "a= without a name")
            fate, is_ice, named = classes.get(name) or classes.get(name.lower(), _DROPPED)
            if is_ice:
                ice = True
            if named is not None and not colon and found is None:
                found = named
            if fate is _KEEP:
                kept.append(line)
            elif fate is _RELAY:
                # a=rtcp, on an active stream only: its value goes to the endpoint and the
                # relay's RTCP port and address are filled in by `rewrite`.
                if rtcp is None:
                    rtcp = value if colon else ""
                rtcp_at.append(len(kept))
                kept.append(f"a={name}:")
            elif fate is _GROUP and group_crosses(value if colon else None):
                kept.append(line)
        elif kind == "c":
            fields = line[2:].split()
            if len(fields) != 3:
                raise bad_line(number, "c= needs 3 fields")
            if fields[0] != "IN":
                only_in = False
            if host is None:
                host = fields[2].split("/", 1)[0]
                unspecified = host in HOLD_HOSTS
                if port == -1:
                    kept[0] = "c=" + " ".join(fields)
                elif port > 0:
                    connection_at = len(kept)
                    kept.append("c=" + " ".join(fields))
        elif kind == "m":
            # §5.14: m=<media> <port>[/<number of ports>] <proto> <fmt> ...; a rejected
            # stream in an answer sometimes arrives without formats, which is kept.
            fields = line[2:].split()
            if len(fields) < 3:
                raise bad_line(number, "m= needs media, port and proto")
            port_text, slash, count_text = fields[1].partition("/")
            new_port = port_number(port_text, number)
            new_count = port_number(count_text, number) if slash else None
            parts.append(_part(port, port_count, m_kind, m_rest, proto, rtcp, host,
                               unspecified, found, ice, kept, connection_at, rtcp_at, has_time,
                               not parts))
            port = new_port
            port_count = new_count
            section = _ACTIVE if port else _DISABLED
            classes = _FACTS[section]
            m_kind = f"m={fields[0]} "
            m_rest = " " + " ".join(fields[2:])
            proto = fields[2]
            rtcp = None
            host = None
            unspecified = False
            found = None
            ice = False
            kept = []
            connection_at = -1
            rtcp_at = []
        elif kind == "b":
            bwtype, colon, _ = line[2:].partition(":")
            if not colon or not bwtype:
                raise bad_line(number, "b= is not <bwtype>:<bandwidth>")
            if line_fate("b", section) is _KEEP:
                kept.append(line)
        elif kind not in "vos":
            if line_fate(kind, section) is _KEEP:
                has_time = has_time or kind == "t"
                kept.append(line)
        elif kind == "v" or port != -1:
            raise bad_line(number, f"{kind}= out of place")
        elif kind == "o":
            if has_origin:
                raise bad_line(number, "second o= line")
            fields = line[2:].split()
            if len(fields) != 6:
                raise bad_line(number, "o= needs 6 fields")
            has_origin = True
            if fields[3] != "IN":
                only_in = False
        else:
            if has_name:
                raise bad_line(number, "second s= line")
            has_name = True

    if not has_origin:
        raise ParseError("Bad SDP: no o= line")
    parts.append(_part(port, port_count, m_kind, m_rest, proto, rtcp, host, unspecified, found,
                       ice, kept, connection_at, rtcp_at, has_time, not parts))
    return Scan(parts[0], tuple(parts[1:]), only_in, any(part.ice for part in parts))


def _part(port: int, port_count: int | None, m_kind: str, m_rest: str, proto: str,
          rtcp: str | None, host: str | None, unspecified: bool, found: Direction | None,
          ice: bool, kept: list[str], connection_at: int, rtcp_at: list[int], has_time: bool,
          session: bool) -> Part:
    """The section just read; `session`: it is the session section (before any m=)."""
    if session and not has_time:
        kept.append("t=0 0")     # §5.9: t= is mandatory; "0 0" is unbounded, as SIP calls are
    ranks = SESSION_ORDER if session else MEDIA_ORDER
    # Every kind kept is in `ranks` (c, b, a and t, r, z), so in_rfc_order's rule for an
    # unlisted kind never applies.
    ordered = True
    rank = 0
    for line in kept:
        new_rank = ranks[line[0]]
        if new_rank < rank:
            ordered = False
            break
        rank = new_rank
    return Part(port, port_count, m_kind, m_rest, proto, rtcp, host, unspecified, found, ice,
                tuple(kept), connection_at, tuple(rtcp_at), ordered)


def check_relayable(sd: Scan) -> None:
    """Raise SdpError (488) for a description the relay cannot carry: a network type other
    than IN, or an active m= line over several ports (§5.14 layered encoding; the relay
    carries one pair per line). Run before anything is opened for the body."""
    if not sd.only_in:
        raise SdpError("Not Acceptable Here: SDP network type is not IN")
    if any(section.port != 0 and section.port_count is not None and section.port_count > 1
           for section in sd.media):
        raise SdpError("Not Acceptable Here: m= with several ports")


def media_endpoints(sd: Scan) -> list[MediaEndpoint | None]:
    """Where each m= line asks to receive media, or None for port 0.

    RFC 4566 §5.7: a media-level c= overrides the session-level one. A host of 0.0.0.0
    means the stream is on hold (RFC 3264 §8.4) and nothing should be sent to it.
    Raises SdpError (488) when an active stream has no c= at either level.
    """
    session_host = sd.session.host
    endpoints: list[MediaEndpoint | None] = []
    for index, section in enumerate(sd.media, start=1):
        if section.port == 0:
            endpoints.append(None)
            continue
        host = section.host if section.host is not None else session_host
        if host is None:
            raise SdpError(f"Not Acceptable Here: m= line {index} has no c= address")
        endpoints.append(media_endpoint(host, section.port, section.proto, section.rtcp))
    return endpoints


def is_on_hold(sd: Scan) -> bool:
    """True when the author of the body will receive no media: no active stream receives.

    A stream's direction is its own attribute, else the session's, else sendrecv (RFC 4566
    §6); a c= of 0.0.0.0 takes away "receive" (RFC 3264 §8.4), unless ICE is in use (RFC
    8840 §4.2: 0.0.0.0 is then a placeholder). Disabled streams (port 0) do not count."""
    session = sd.session
    for section in sd.media:
        if section.port == 0:
            continue
        found = section.direction or session.direction or _SENDRECV
        if not found.receives:
            continue
        unspecified = (section.unspecified if section.host is not None
                       else session.host is not None and session.unspecified)
        if unspecified and not (section.ice or session.ice):
            continue
        return False
    return True


def relay_ports_needed(sd: Scan) -> int:
    """How many relay port pairs `rewrite` needs: one per m= line not at port 0."""
    return sum(1 for section in sd.media if section.port != 0)


def rewrite(sd: Scan, address: str, ports: list[int], counter: OriginCounter) -> bytes:
    """The body for the other leg: the relay's `address`, one of `ports` per m= line not at
    port 0, in order (RTCP on port + 1, RFC 3550 §11), o= from `counter` (its version goes
    up when the body differs from the last one it stamped), and what the privacy rule lets
    cross. Raises ValueError when `ports` does not fit (a caller's mistake) and SdpError
    (488) for a body the relay cannot carry; `counter` is then untouched."""
    wanted = relay_ports_needed(sd)
    if len(ports) != wanted:
        raise ValueError(f"relay rewrite: {wanted} relay ports needed, {len(ports)} given")
    check_relayable(sd)
    media = sd.media
    relay = relay_connection(address)
    relay_line = "c=" + relay
    hold_allowed = not sd.ice

    session = sd.session
    session_lines = list(session.lines)
    if not (hold_allowed and session.unspecified):
        session_lines[0] = relay_line
    out = ["v=0", "s=" + SESSION_NAME, *session_lines]
    sorted_out = ["v=0", "", "s=" + SESSION_NAME]
    sorted_out += (session_lines if session.ordered
                   else sorted(session_lines, key=lambda line: SESSION_ORDER[line[0]]))
    next_port = iter(ports)
    for section in media:
        lines = list(section.lines)
        if section.port == 0:
            m_line = f"{section.m_kind}0{section.m_rest}"
        else:
            port = next(next_port)
            m_line = f"{section.m_kind}{port}{section.m_rest}"
            at = section.connection_at
            if at >= 0 and not (hold_allowed and section.unspecified):
                lines[at] = relay_line
            if section.rtcp_at:
                rtcp = f"{port + 1} {relay}"
                for at in section.rtcp_at:
                    lines[at] += rtcp
        out.append(m_line)
        out += lines
        sorted_out.append(m_line)
        sorted_out += (lines if section.ordered
                       else sorted(lines, key=lambda line: MEDIA_ORDER[line[0]]))
    sorted_out[1] = "o=" + counter.advance(tuple(out))
    sorted_out.append("")
    return "\r\n".join(sorted_out).encode("utf-8", "surrogateescape")
