"""Rewrite an SDP so that it points at sipmask's relay and says nothing about the peer.

The privacy contract (DESIGN.md): nothing in an SDP that leaves sipmask may reveal the other
party's identity or address. Like leg B's headers, the output is *built* from a whitelist:

- o= is sipmask's own (`OriginCounter`), s= is "-" (RFC 8866 §5.3), t= r= z= b= are kept.
- c= and a=rtcp point at the relay; m= ports are the relay's ports. A c= of 0.0.0.0 (or ::)
  is kept: it is RFC 3264 §8.4 hold, and it names nobody. Not so in an SDP that uses ICE:
  there 0.0.0.0 only says no candidate was gathered yet (RFC 8840 §4.2), so it is
  rewritten like any other address and does not count as hold.
- i=, u=, e=, p= (RFC 4566 §5.4-5.6: free text, a URI, e-mail and phone of the user), k=
  (§5.12: may carry a URI) and line types RFC 4566 does not define are dropped.
- a= lines are kept only when their name is in KEPT_ATTRIBUTES (codecs, direction, RTCP
  options, SRTP/DTLS keying, preconditions, T.38). An unknown vendor attribute may carry
  anything (a=X-nat:10.1.2.3), so it does not cross.
- NEVER_KEPT names cannot be added back by a caller: ICE (RFC 8839 §5: candidates are the
  host's private and public addresses; ufrag/pwd are its credentials), a=ssrc and
  a=ssrc-group (RFC 5576 §4.1: the cname is the RTCP CNAME, "user@host" by RFC 3550
  §6.5.1; the group only names ssrc ids that no longer appear), a=msid and a=msid-semantic
  (RFC 8830: stream ids an application keeps across calls, so they link a caller's calls),
  a=tool (RFC 4566 §6: the software and version, like User-Agent, which never crosses),
  a=path (RFC 4975 §8.2: MSRP URIs with the peer's host) and a=key-mgmt (RFC 4567: MIKEY
  may carry the initiator's identity, RFC 3830 §6.7).
- a=group:BUNDLE and a=bundle-only are dropped: RFC 8843 bundles several m= lines onto one
  transport, and the relay gives each m= line its own port pair.

The codec list of every m= line is kept as it is, with its rtpmap/fmtp/ptime lines, so
telephone-event (RFC 4733 DTMF) and the peer's codec preference survive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from sipmask.entropy import token_bytes
from sipmask.sdp.errors import SdpError
from sipmask.sdp.model import (
    Attribute,
    Bandwidth,
    Connection,
    Line,
    MediaDescription,
    Origin,
    SdpLine,
    SessionDescription,
    render,
)

KEPT_ATTRIBUTES = frozenset({
    # RFC 4566 §6 media formats and packetisation; RFC 3108 / ITU-T V.152 voice-band extras.
    "rtpmap", "fmtp", "ptime", "maxptime", "framerate", "quality", "maxprate",
    "silencesupp", "ecan", "gpmd",
    # RFC 3264 §5.1 / RFC 4566 §6: direction, which hold and resume depend on.
    "sendrecv", "sendonly", "recvonly", "inactive",
    # RFC 3605 a=rtcp (rewritten to the relay below), RFC 5761 mux, RFC 5506, 4585, 3611.
    "rtcp", "rtcp-mux", "rtcp-mux-only", "rtcp-rsize", "rtcp-fb", "rtcp-xr",
    # Keying stays end to end: RFC 4568 SDES, RFC 8122 fingerprint, RFC 4145 setup and
    # connection, RFC 8842 tls-id (dtls-id is its draft name), RFC 9335 cryptex.
    "crypto", "fingerprint", "setup", "connection", "tls-id", "dtls-id", "cryptex",
    # RFC 3312 preconditions (used with 100rel by carriers).
    "curr", "des", "conf",
    # RFC 5888 grouping (BUNDLE filtered out below), RFC 8285 header extensions, RFC 8851/8853.
    "mid", "group", "extmap", "extmap-allow-mixed", "rid", "simulcast",
    # RFC 4796 content, RFC 4566 §6 session properties that describe no one.
    "content", "sdplang", "lang", "charset", "orient", "type",
    # ITU-T T.38 Annex D fax over IP (RFC 3362).
    "t38faxversion", "t38maxbitrate", "t38faxfillbitremoval", "t38faxtranscodingmmr",
    "t38faxtranscodingjbig", "t38faxratemanagement", "t38faxmaxbuffer", "t38faxmaxdatagram",
    "t38faxudpec", "t38faxmaxifp", "t38faxudpecdepth", "t38faxudpfecmaxspan",
    "t38modemtype",
})

NEVER_KEPT = frozenset({
    "candidate", "remote-candidates", "end-of-candidates", "ice-ufrag", "ice-pwd",
    "ice-options", "ice-lite", "ice-mismatch", "ice-pacing",
    "ssrc", "ssrc-group", "msid", "msid-semantic", "tool", "path", "key-mgmt",
    "bundle-only",
})



def _allowed(keep_attributes: frozenset[str]) -> frozenset[str]:
    """What may be kept: the caller's names, never NEVER_KEPT nor any ICE name."""
    return frozenset(name.lower() for name in keep_attributes
                     if not name.lower().startswith("ice-")) - NEVER_KEPT


_DEFAULT_KEEP = _allowed(KEPT_ATTRIBUTES)

# RFC 4566 §5: session lines that describe timing or bandwidth and name nobody.
_KEPT_SESSION_LINES = frozenset({"t", "r", "z"})

# RFC 4566 §5.3 wants a non-empty s=; RFC 8866 §5.3 recommends "-" when there is no name.
NO_SESSION_NAME = "-"


class Direction(StrEnum):
    """RFC 3264 §5.1 stream direction, from the point of view of the SDP's author."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @classmethod
    def of(cls, sends: bool, receives: bool) -> Direction:
        if sends:
            return cls.SENDRECV if receives else cls.SENDONLY
        return cls.RECVONLY if receives else cls.INACTIVE

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)


_DIRECTIONS = {d.value: d for d in Direction}


def rewrite_for_relay(sd: SessionDescription, *, address: str, ports: Sequence[int],
                      origin: Origin,
                      keep_attributes: frozenset[str] = KEPT_ATTRIBUTES) -> SessionDescription:
    """A new description for the other leg; `sd` is not changed.

    `ports` holds one relay RTP port per m= line whose port is not 0, in order (see
    `relay_ports_needed`); RTCP is that port + 1 (RFC 3550 §11). A port-0 m= line (a
    rejected or disabled stream, RFC 3264 §6) stays 0 and takes no relay port.
    Raises SdpError (488) for a stream the relay cannot carry and ValueError when `ports`
    does not match the description (a caller's mistake).
    """
    wanted = relay_ports_needed(sd)
    if len(ports) != wanted:
        raise ValueError(f"rewrite_for_relay: {wanted} relay ports needed, {len(ports)} given")
    check_relayable(sd)
    keep = _DEFAULT_KEEP if keep_attributes is KEPT_ATTRIBUTES else _allowed(keep_attributes)
    relay = Connection.for_address(address)
    hold_allowed = not uses_ice(sd)

    session_lines: list[SdpLine] = []
    session_connection = sd.connection
    session_lines.append(session_connection if session_connection is not None and hold_allowed
                         and session_connection.is_unspecified else relay)
    has_time = False
    for line in sd.lines:
        if isinstance(line, Bandwidth):
            session_lines.append(line)
        elif isinstance(line, Attribute):
            kept = _kept_attribute(line, keep, None, address)
            if kept is not None:
                session_lines.append(kept)
        elif isinstance(line, Line) and line.kind in _KEPT_SESSION_LINES:
            has_time = has_time or line.kind == "t"
            session_lines.append(line)
    if not has_time:
        # §5.9: t= is mandatory; "0 0" is an unbounded session, what SIP calls use.
        session_lines.append(Line("t", "0 0"))

    media: list[MediaDescription] = []
    next_port = iter(ports)
    for section in sd.media:
        if section.port == 0:
            media.append(_rewrite_media(section, 0, None, keep, address, hold_allowed))
            continue
        media.append(_rewrite_media(section, next(next_port), relay, keep, address,
                                    hold_allowed))

    return SessionDescription(origin=origin, session_name=NO_SESSION_NAME,
                              lines=session_lines, media=media, version=sd.version)


def _rewrite_media(section: MediaDescription, port: int, relay: Connection | None,
                   keep: frozenset[str], address: str, hold_allowed: bool) -> MediaDescription:
    lines: list[SdpLine] = []
    connection_done = False
    for line in section.lines:
        if isinstance(line, Connection):
            # A disabled stream needs no c= of its own: the session c= covers it. Several c=
            # (§5.7, multicast layers) collapse into one relay address.
            if relay is not None and not connection_done:
                lines.append(line if hold_allowed and line.is_unspecified else relay)
                connection_done = True
        elif isinstance(line, Bandwidth):
            lines.append(line)
        elif isinstance(line, Attribute):
            kept = _kept_attribute(line, keep, port or None, address)
            if kept is not None:
                lines.append(kept)
    return MediaDescription(kind=section.kind, port=port, proto=section.proto,
                            formats=list(section.formats), port_count=None, lines=lines)


def _kept_attribute(line: Attribute, keep: frozenset[str], rtp_port: int | None,
                    address: str) -> Attribute | None:
    key = line.name.lower()
    if key not in keep:
        return None
    if key == "rtcp":
        # RFC 3605 §2.1: a=rtcp:<port> [nettype addrtype address]; it points at the relay's
        # RTCP port, and only where the stream has a relay port.
        if rtp_port is None:
            return None
        relay = Connection.for_address(address)
        return Attribute(line.name, f"{rtp_port + 1} {relay.value()}")
    if key == "group" and (line.value or "").split(" ", 1)[0].upper() == "BUNDLE":
        return None
    return line


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


@dataclass(frozen=True, slots=True)
class MediaEndpoint:
    """Where one active m= line receives media, as its SDP says. `host` may be a name
    (RFC 4566 §5.7 allows an FQDN in c=); the media backend resolves it once per offer."""

    host: str                       # c= address, multicast suffix dropped; 0.0.0.0: hold
    port: int                       # m= port, RTP
    rtcp_port: int | None = None    # RFC 3605 a=rtcp; None: port + 1 (RFC 3550 §11)
    rtcp_host: str | None = None    # the address a=rtcp names, if any; None: host
    secure: bool = False            # an SRTP profile (RFC 3711 SAVP, RFC 5124 SAVPF)


def media_endpoint(host: str, port: int, proto: str, rtcp: str | None) -> MediaEndpoint:
    """The endpoint of one active m= line from its c= host, m= port and proto, and the
    value of its first a=rtcp (None: there is none). One rule for both SDP paths."""
    rtcp_port: int | None = None
    rtcp_host: str | None = None
    if rtcp is not None:
        # RFC 3605 §2.1: a=rtcp:<port> [<nettype> <addrtype> <connection-address>]. A value
        # that is not that is ignored, as before: RTCP then goes to port + 1.
        fields = rtcp.split()
        if fields and fields[0].isascii() and fields[0].isdigit() and len(fields[0]) <= 5 \
                and int(fields[0]) <= 65535:
            rtcp_port = int(fields[0])
            if len(fields) == 4 and fields[1] == "IN":
                rtcp_host = fields[3].split("/", 1)[0]
    # RTP/SAVP, RTP/SAVPF and their UDP/TLS/ (DTLS-SRTP, RFC 5764) and TCP/TLS/ forms.
    secure = proto.upper().endswith(("/SAVP", "/SAVPF"))
    return MediaEndpoint(host, port, rtcp_port, rtcp_host, secure)


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
    return any(type(line) is Attribute and line.name.lower() in _ICE_MARKERS for line in lines)


_ICE_MARKERS = frozenset({"candidate", "ice-ufrag", "ice-pwd", "ice-lite"})


def is_on_hold(sd: SessionDescription) -> bool:
    """True when the author of `sd` will receive no media: sendonly or inactive overall."""
    return not direction(sd).receives


def _direction_attribute(lines: Sequence[SdpLine]) -> Direction | None:
    for line in lines:
        if isinstance(line, Attribute) and line.value is None:
            found = _DIRECTIONS.get(line.key)
            if found is not None:
                return found
    return None


def new_session_id() -> int:
    """A fresh sess-id. RFC 4566 §5.2 only asks that it be numeric and unique; it is kept
    below 2**31 because some carrier equipment reads it into a signed 32-bit field."""
    return int.from_bytes(token_bytes(4)) % (2**31 - 2**20) + 2**20


@dataclass(slots=True)
class OriginCounter:
    """sipmask's o= line for one leg: the same sess-id for the leg's whole life, and a
    sess-version that goes up by one each time the description sent on the leg changes
    (RFC 3264 §8: "incremented by one from the previous SDP" when it differs, the same
    when it does not). The username is "-" (RFC 4566 §5.2) so no user name is shown.

        counter = OriginCounter(address=relay_address, sess_id=new_session_id())
        out = counter.stamp(rewrite_for_relay(sd, address=..., ports=...,
                                              origin=counter.origin))
    """

    address: str
    sess_id: int
    username: str = "-"
    sess_version: int = -1
    _last: tuple[str, ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Stacks commonly start the version at the sess-id; any start is valid (§5.2).
        if self.sess_version < 0:
            self.sess_version = self.sess_id

    @property
    def origin(self) -> Origin:
        return Origin.for_address(self.address, self.sess_id, self.sess_version, self.username)

    def stamp(self, sd: SessionDescription) -> SessionDescription:
        """`sd` with this leg's origin, the version raised first if the body changed since
        the last description stamped. The result is a new SessionDescription holding copies
        of `sd`'s line lists; `sd` is not changed."""
        origin = self.advance(fingerprint(sd))
        media = [MediaDescription(m.kind, m.port, m.proto, list(m.formats), m.port_count,
                                  list(m.lines)) for m in sd.media]
        return SessionDescription(origin, sd.session_name, list(sd.lines), media, sd.version)

    def advance(self, lines: tuple[str, ...]) -> Origin:
        """The origin for a description whose `fingerprint` is `lines`: the version goes up
        by one when they differ from the last description's."""
        if self._last is not None and lines != self._last:
            self.sess_version += 1
        self._last = lines
        return self.origin


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
