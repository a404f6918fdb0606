"""The per-call SDP work of the embedded media backend, on strings: parse, media endpoints,
hold, relay rewrite, o= stamp and serialize, with the same answers and bytes as
parse → media_endpoints / is_on_hold / rewrite_for_relay → OriginCounter.stamp → to_bytes.

`scan` reads a body once into a `Scan`: the checks `parse` makes, the facts
`media_endpoints` and `is_on_hold` read, and the rewritten lines that do not depend on the
relay address or ports (kept verbatim, as the model renders a line exactly as parsed). No
dataclass is built per line. `rewrite` then fills in the relay c=, a=rtcp and m= ports.

The fast path never raises: every body `parse` refuses, and everything `rewrite_for_relay`
refuses (a network type other than IN, layered ports, a port list of the wrong length), makes
it decline with None, and the caller runs the full path, which raises what it always raised.
What crosses is decided by the privacy rule (sdp/privacy.py), as in rewrite_for_relay.
"""

from __future__ import annotations

from typing import NamedTuple

from sipmask.errors import ParseError
from sipmask.sdp.model import _MEDIA_RANK, _SESSION_RANK
from sipmask.sdp.parser import _split_lines
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
from sipmask.sdp.rewrite import (
    _DIRECTIONS,
    Direction,
    MediaEndpoint,
    OriginCounter,
    media_endpoint,
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
    return {name: (fates.get(name, Fate.DROP), name in ICE_MARKERS, _DIRECTIONS.get(name))
            for name in fates.keys() | ICE_MARKERS | _DIRECTIONS.keys()}


_FACTS = {section: _facts(section) for section in Section}


def scan(data: bytes) -> Scan | None:
    """Read one body, or None when `parse` would refuse it."""
    text = data.decode("utf-8", "surrogateescape")
    try:
        lines = _split_lines(text)
    except ParseError:
        return None
    first = 0
    count = len(lines)
    while first < count and not lines[first]:
        first += 1
    if first == count or lines[first] != "v=0":
        return None

    section = Section.SESSION
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

    for line in lines[first + 1:]:
        if not line:
            continue
        if line[1:2] != "=":
            return None
        kind = line[0]
        if kind == "a":
            name, colon, value = line[2:].partition(":")
            if not name:
                return None
            fate, is_ice, named = classes.get(name) or classes.get(name.lower(), _DROPPED)
            if is_ice:
                ice = True
            if named is not None and not colon and found is None:
                found = named
            if fate is Fate.KEEP:
                kept.append(line)
            elif fate is Fate.RELAY:
                # a=rtcp, on an active stream only: its value goes to the endpoint and the
                # relay's RTCP port and address are filled in by `rewrite`.
                if rtcp is None:
                    rtcp = value if colon else ""
                rtcp_at.append(len(kept))
                kept.append(f"a={name}:")
            elif fate is Fate.GROUP and group_crosses(value if colon else None):
                kept.append(line)
        elif kind == "c":
            fields = line[2:].split()
            if len(fields) != 3:
                return None
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
            fields = line[2:].split()
            if len(fields) < 3:
                return None
            port_text, slash, count_text = fields[1].partition("/")
            if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
                    and int(port_text) <= 65535):
                return None
            new_count: int | None = None
            if slash:
                if not (count_text.isascii() and count_text.isdigit() and len(count_text) <= 5
                        and int(count_text) <= 65535):
                    return None
                new_count = int(count_text)
            parts.append(_part(port, port_count, m_kind, m_rest, proto, rtcp, host,
                               unspecified, found, ice, kept, connection_at, rtcp_at, has_time,
                               not parts))
            port = int(port_text)
            port_count = new_count
            section = Section.ACTIVE if port else Section.DISABLED
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
                return None
            if line_fate("b", section) is Fate.KEEP:
                kept.append(line)
        elif kind not in "vos":
            if line_fate(kind, section) is Fate.KEEP:
                has_time = has_time or kind == "t"
                kept.append(line)
        elif kind == "v" or port != -1:
            return None
        elif kind == "o":
            fields = line[2:].split()
            if has_origin or len(fields) != 6:
                return None
            has_origin = True
            if fields[3] != "IN":
                only_in = False
        else:
            if has_name:
                return None
            has_name = True

    if not has_origin:
        return None
    parts.append(_part(port, port_count, m_kind, m_rest, proto, rtcp, host, unspecified, found,
                       ice, kept, connection_at, rtcp_at, has_time, not parts))
    return Scan(parts[0], tuple(parts[1:]), only_in, any(part.ice for part in parts))


def _part(port: int, port_count: int | None, m_kind: str, m_rest: str, proto: str,
          rtcp: str | None, host: str | None, unspecified: bool, found: Direction | None,
          ice: bool, kept: list[str], connection_at: int, rtcp_at: list[int], has_time: bool,
          session: bool) -> Part:
    """The section just read; `session`: it is the session section (before any m=)."""
    if session and not has_time:
        kept.append("t=0 0")     # §5.9: t= is mandatory; rewrite_for_relay adds "0 0"
    ranks = _SESSION_RANK if session else _MEDIA_RANK
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


def media_endpoints(sd: Scan) -> list[MediaEndpoint | None] | None:
    """rewrite.media_endpoints, or None where it would raise (an active stream without c=)."""
    session_host = sd.session.host
    endpoints: list[MediaEndpoint | None] = []
    for section in sd.media:
        if section.port == 0:
            endpoints.append(None)
            continue
        host = section.host if section.host is not None else session_host
        if host is None:
            return None
        endpoints.append(media_endpoint(host, section.port, section.proto, section.rtcp))
    return endpoints


def relayable(sd: Scan) -> bool:
    """Whether rewrite.check_relayable passes: nettype IN throughout and no active m= line
    over several ports."""
    if not sd.only_in:
        return False
    return not any(section.port != 0 and section.port_count is not None
                   and section.port_count > 1 for section in sd.media)


def is_on_hold(sd: Scan) -> bool:
    """rewrite.is_on_hold: no active stream receives."""
    session = sd.session
    for section in sd.media:
        if section.port == 0:
            continue
        found = section.direction or session.direction or Direction.SENDRECV
        if not found.receives:
            continue
        unspecified = (section.unspecified if section.host is not None
                       else session.host is not None and session.unspecified)
        if unspecified and not (section.ice or session.ice):
            continue
        return False
    return True


def rewrite(sd: Scan, address: str, ports: list[int], counter: OriginCounter) -> bytes | None:
    """rewrite_for_relay(..., origin=counter.origin), stamped by `counter` and serialized;
    None (with `counter` untouched) where rewrite_for_relay would raise."""
    media = sd.media
    if not relayable(sd) or len(ports) != sum(1 for section in media if section.port != 0):
        return None
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
                   else sorted(session_lines, key=lambda line: _SESSION_RANK[line[0]]))
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
                       else sorted(lines, key=lambda line: _MEDIA_RANK[line[0]]))
    sorted_out[1] = "o=" + counter.advance(tuple(out)).value()
    sorted_out.append("")
    return "\r\n".join(sorted_out).encode("utf-8", "surrogateescape")
