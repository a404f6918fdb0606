"""Rewrite an SDP so that it points at sipmask's relay and says nothing about the peer, on
the data model: the test oracle of the call path (sdp/scan.py), which must give the same
answers, bytes and refusals. No production code imports it (sdp/__init__.py says why).

What crosses is decided by the privacy rule in sdp/privacy.py (a whitelist, line by line);
this module applies it to a parsed description and builds a new one: a fresh o= (given by
the caller, see `OriginCounter`), s=-, the relay's c= (or the RFC 3264 §8.4 hold address),
the relay's ports on m= and a=rtcp, and the lines the rule keeps, as they came.

The codec list of every m= line is kept as it is, with its rtpmap/fmtp/ptime lines, so
telephone-event (RFC 4733 DTMF) and the peer's codec preference survive.
"""

from __future__ import annotations

from collections.abc import Sequence

from sipmask.sdp.endpoints import DIRECTIONS, Direction, MediaEndpoint, media_endpoint
from sipmask.sdp.errors import SdpError
from sipmask.sdp.model import (
    Attribute,
    Connection,
    Line,
    MediaDescription,
    Origin,
    SdpLine,
    SessionDescription,
    kind_of,
    render,
)
from sipmask.sdp.origin import OriginCounter
from sipmask.sdp.privacy import (
    ICE_MARKERS,
    SESSION_NAME,
    Fate,
    Section,
    attribute_fate,
    group_crosses,
    line_fate,
)


def rewrite_for_relay(sd: SessionDescription, *, address: str, ports: Sequence[int],
                      origin: Origin) -> SessionDescription:
    """A new description for the other leg; `sd` is not changed.

    `ports` holds one relay RTP port per m= line whose port is not 0, in order (see
    `relay_ports_needed`); RTCP is that port + 1 (RFC 3550 §11). A port-0 m= line (a
    rejected or disabled stream, RFC 3264 §6) stays 0 and takes no relay port.
    Raises SdpError (488) for a stream the relay cannot carry and ValueError when `ports`
    does not match the description (a caller's mistake).
    """
    wanted = relay_ports_needed(sd)
    if len(ports) != wanted:
        raise ValueError(f"relay rewrite: {wanted} relay ports needed, {len(ports)} given")
    check_relayable(sd)
    relay = Connection.for_address(address)
    hold_allowed = not uses_ice(sd)

    # The session c= comes first: the relay's, or the hold address (sdp/privacy.py).
    session_connection = sd.connection
    session_lines: list[SdpLine] = [
        session_connection if session_connection is not None and hold_allowed
        and session_connection.is_unspecified else relay]
    session_lines += _crossing(sd.lines, Section.SESSION, relay, hold_allowed, 0)
    if not any(isinstance(line, Line) and line.kind == "t" for line in session_lines):
        # §5.9: t= is mandatory; "0 0" is an unbounded session, what SIP calls use.
        session_lines.append(Line("t", "0 0"))

    media: list[MediaDescription] = []
    next_port = iter(ports)
    for section in sd.media:
        port = 0 if section.port == 0 else next(next_port)
        where = Section.ACTIVE if port else Section.DISABLED
        media.append(MediaDescription(
            kind=section.kind, port=port, proto=section.proto, formats=list(section.formats),
            port_count=None, lines=_crossing(section.lines, where, relay, hold_allowed, port)))

    return SessionDescription(origin=origin, session_name=SESSION_NAME,
                              lines=session_lines, media=media, version=sd.version)


def _crossing(lines: Sequence[SdpLine], where: Section, relay: Connection,
              hold_allowed: bool, rtp_port: int) -> list[SdpLine]:
    """The lines of one section that cross, by their fate (sdp/privacy.py), RELAY lines
    pointed at the relay: an active stream's first c= (several c=, §5.7 multicast layers,
    collapse into one) and its a=rtcp (RFC 3605 §2.1: <port> <nettype> <addrtype> <address>).
    The session c= is written by the caller, and a disabled stream needs none of its own."""
    out: list[SdpLine] = []
    connection_done = where is not Section.ACTIVE
    for line in lines:
        if isinstance(line, Attribute):
            fate = attribute_fate(line.name, where)
            if fate is Fate.GROUP:
                fate = Fate.KEEP if group_crosses(line.value) else Fate.DROP
            if fate is Fate.KEEP:
                out.append(line)
            elif fate is Fate.RELAY:
                out.append(Attribute(line.name, f"{rtp_port + 1} {relay.value()}"))
            continue
        fate = line_fate(kind_of(line), where)
        if fate is Fate.KEEP:
            out.append(line)
        elif fate is Fate.RELAY and not connection_done and isinstance(line, Connection):
            out.append(line if hold_allowed and line.is_unspecified else relay)
            connection_done = True
    return out


def check_relayable(sd: SessionDescription) -> None:
    """Raise SdpError (488) for a description the relay cannot carry: a network type other
    than IN, or an active m= line over several ports (§5.14 layered encoding; the relay
    carries one pair per line). EmbeddedBackend runs this before it opens anything."""
    for nettype in _nettypes(sd):
        if nettype != "IN":
            raise SdpError("Not Acceptable Here: SDP network type is not IN")
    for section in sd.media:
        if section.port != 0 and section.port_count is not None and section.port_count > 1:
            raise SdpError("Not Acceptable Here: m= with several ports")


def _nettypes(sd: SessionDescription) -> set[str]:
    found = {sd.origin.nettype}
    found.update(line.nettype for line in sd.lines if isinstance(line, Connection))
    for section in sd.media:
        found.update(c.nettype for c in section.connections)
    return found


def relay_ports_needed(sd: SessionDescription) -> int:
    """How many relay port pairs `rewrite_for_relay` needs: one per m= line not at port 0."""
    return sum(1 for section in sd.media if section.port != 0)


def media_endpoints(sd: SessionDescription) -> list[MediaEndpoint | None]:
    """Where each m= line asks to receive media, or None for port 0.

    RFC 4566 §5.7: a media-level c= overrides the session-level one. A host of 0.0.0.0
    means the stream is on hold (RFC 3264 §8.4) and nothing should be sent to it.
    Raises SdpError when an active stream has no c= at either level.
    """
    session = sd.connection
    endpoints: list[MediaEndpoint | None] = []
    for index, section in enumerate(sd.media, start=1):
        if section.port == 0:
            endpoints.append(None)
            continue
        connection = section.connection or session
        if connection is None:
            raise SdpError(f"Not Acceptable Here: m= line {index} has no c= address")
        rtcp = section.attribute("rtcp")
        endpoints.append(media_endpoint(connection.host, section.port, section.proto,
                                        None if rtcp is None else rtcp.value or ""))
    return endpoints


def direction(target: SessionDescription | MediaDescription,
              session: SessionDescription | None = None) -> Direction:
    """The direction an SDP's author offers or accepts, for hold detection.

    For one m= line: its own direction attribute, else the session's, else sendrecv
    (RFC 4566 §6); a port of 0 is inactive (RFC 3264 §6); a c= of 0.0.0.0 takes away
    "receive" (RFC 3264 §8.4: nothing is to be sent to that address), unless ICE is in use
    (RFC 8840 §4.2: 0.0.0.0 is then a placeholder). Pass `session` so the session-level
    attribute, c= and ICE lines are seen.
    For a whole description: it sends if any active stream sends and receives if any
    receives, so sendonly or inactive there means the author put the call on hold.
    """
    if isinstance(target, SessionDescription):
        sends = receives = False
        for section in target.media:
            each = direction(section, target)
            sends = sends or each.sends
            receives = receives or each.receives
        return Direction.of(sends, receives)
    if target.port == 0:
        return Direction.INACTIVE
    found = _direction_attribute(target.lines)
    if found is None and session is not None:
        found = _direction_attribute(session.lines)
    result = found or Direction.SENDRECV
    connection = target.connection or (session.connection if session is not None else None)
    ice = _has_ice(target.lines) or (session is not None and _has_ice(session.lines))
    if connection is not None and connection.is_unspecified and not ice:
        result = Direction.of(result.sends, False)
    return result


def uses_ice(sd: SessionDescription) -> bool:
    """True when any section carries ICE attributes (RFC 8839 §5)."""
    return _has_ice(sd.lines) or any(_has_ice(section.lines) for section in sd.media)


def _has_ice(lines: Sequence[SdpLine]) -> bool:
    return any(type(line) is Attribute and line.name.lower() in ICE_MARKERS for line in lines)


def is_on_hold(sd: SessionDescription) -> bool:
    """True when the author of `sd` will receive no media: sendonly or inactive overall."""
    return not direction(sd).receives


def _direction_attribute(lines: Sequence[SdpLine]) -> Direction | None:
    for line in lines:
        if isinstance(line, Attribute) and line.value is None:
            found = DIRECTIONS.get(line.key)
            if found is not None:
                return found
    return None


def origin_of(counter: OriginCounter) -> Origin:
    """The o= line `counter` writes now, as the model's Origin."""
    return Origin.for_address(counter.address, counter.sess_id, counter.sess_version,
                              counter.username)


def stamp(counter: OriginCounter, sd: SessionDescription) -> SessionDescription:
    """`sd` with the leg's origin, the version raised first if the body changed since the
    last description stamped (OriginCounter.advance). The result is a new
    SessionDescription holding copies of `sd`'s line lists; `sd` is not changed."""
    counter.advance(fingerprint(sd))
    media = [MediaDescription(m.kind, m.port, m.proto, list(m.formats), m.port_count,
                              list(m.lines)) for m in sd.media]
    return SessionDescription(origin_of(counter), sd.session_name, list(sd.lines), media,
                              sd.version)


def relay_body(sd: SessionDescription, *, address: str, ports: Sequence[int],
               counter: OriginCounter) -> bytes:
    """The model path whole, as sdp/scan.py `rewrite` does it on lines: rewrite_for_relay,
    stamped by the leg's counter, serialized."""
    return stamp(counter, rewrite_for_relay(sd, address=address, ports=ports,
                                            origin=origin_of(counter))).to_bytes()


def fingerprint(sd: SessionDescription) -> tuple[str, ...]:
    """Every line but o=, rendered, in the order held (before the RFC 4566 §5 sort). Lines
    are rendered one to one from their fields (parsed fields hold no blanks, names no
    colon), so for descriptions from `parse` and `rewrite_for_relay` two fingerprints are
    equal exactly when the descriptions are equal field by field, origin aside."""
    lines = [f"v={sd.version}"]
    if sd.session_name is not None:
        lines.append("s=" + sd.session_name)
    lines += [render(line) for line in sd.lines]
    for section in sd.media:
        lines.append("m=" + section.m_line_value())
        lines += [render(line) for line in section.lines]
    return tuple(lines)
