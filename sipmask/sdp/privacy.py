"""What of an SDP may leave sipmask: the privacy rule for session descriptions, in one place.

The privacy contract (DESIGN.md): nothing in an SDP that leaves sipmask may reveal the other
party's identity or address. Like leg B's headers, what crosses is a whitelist. Three
walkers apply this rule and ask this module about every line:
- sdp/scan.py, the call path (embedded relay): builds the body for the other leg;
- sdp/rewrite.py, the model rewrite, the test oracle the call path is checked against;
- `scrub` below, on the SDP rtpengine returns. rtpengine (ICE=remove, replace origin and
  session-connection) owns c=, m= ports, a=rtcp and the o= address, and passes every other
  line through: i=, e=, p=, a=tool, vendor lines and a session-level a=rtcp naming the
  party were all seen crossing rtpengine 10.5 unchanged.

The rule, line by line (`Fate`):
- o= is sipmask's own: the rewrites write a fresh one (sdp/origin.py); the scrub, where
  rtpengine has put its address, sets the username to "-" (RFC 4566 §5.2: no user id).
- s= is "-" (RFC 8866 §5.3 recommends it when there is no name).
- c= names the relay (RELAY). A c= of 0.0.0.0 (or ::) is kept: it is RFC 3264 §8.4 hold, and
  it names nobody. Not so in an SDP that uses ICE: there 0.0.0.0 only says no candidate was
  gathered yet (RFC 8840 §4.2), so it is pointed at the relay like any other address.
  The rewrites write no c= on a disabled m= line (port 0): the session c= covers it.
- m= ports are the relay's; a=rtcp points at the relay's RTCP port, on an active m= line
  only (RFC 3605 §2.1 makes it a media-level attribute, and a disabled stream has no relay
  port): at session level or on a disabled stream it is dropped.
- b=, and at session level t=, r=, z=, are kept (timing and bandwidth name nobody).
- i=, u=, e=, p= (RFC 4566 §5.4-5.6: free text, a URI, e-mail and phone of the user), k=
  (§5.12: may carry a URI) and line types RFC 4566 does not define are dropped.
- a= lines are kept only when their name is in KEPT_ATTRIBUTES (codecs, direction, RTCP
  options, SRTP/DTLS keying, preconditions, T.38). An unknown vendor attribute may carry
  anything (a=X-nat:10.1.2.3), so it does not cross.
- NEVER_KEPT names the attributes that carry identities, so that no change to the whitelist
  lets one in (checked at import): ICE (RFC 8839 §5: candidates are the host's private and
  public addresses; ufrag/pwd are its credentials), a=ssrc and a=ssrc-group (RFC 5576 §4.1:
  the cname is the RTCP CNAME, "user@host" by RFC 3550 §6.5.1; the group only names ssrc
  ids that no longer appear), a=msid and a=msid-semantic (RFC 8830: stream ids an
  application keeps across calls, so they link a caller's calls), a=label (RFC 4574: an
  application's own name for a stream), a=tool (RFC 4566 §6: the software and version,
  like User-Agent, which never crosses), a=path (RFC 4975 §8.2: MSRP URIs with the peer's
  host) and a=key-mgmt (RFC 4567: MIKEY may carry the initiator's identity, RFC 3830 §6.7).
- a=group:BUNDLE and a=bundle-only are dropped: RFC 8843 bundles several m= lines onto one
  transport, and the relay gives each m= line its own port pair. Other groups are kept.

What the rtpengine path keeps that the rewrites replace: the o= sess-id and sess-version
(rtpengine keeps the party's; they name no one, RFC 4566 §5.2 only asks them to be numeric).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class Fate(IntEnum):
    """What becomes of one line of an SDP that leaves sipmask."""

    DROP = 0    # does not cross
    KEEP = 1    # crosses as it came
    RELAY = 2   # crosses naming the relay: c= its address, a=rtcp its RTCP port and address
    GROUP = 3   # a=group: kept unless it is a BUNDLE group (`group_crosses`)


class Section(IntEnum):
    """Where a line stands: before the first m= line, or in an m= section whose port is not
    0 (an active stream), or 0 (a disabled one, RFC 3264 §6)."""

    SESSION = 0
    ACTIVE = 1
    DISABLED = 2


KEPT_ATTRIBUTES = frozenset({
    # RFC 4566 §6 media formats and packetisation; RFC 3108 / ITU-T V.152 voice-band extras.
    "rtpmap", "fmtp", "ptime", "maxptime", "framerate", "quality", "maxprate",
    "silencesupp", "ecan", "gpmd",
    # RFC 3264 §5.1 / RFC 4566 §6: direction, which hold and resume depend on.
    "sendrecv", "sendonly", "recvonly", "inactive",
    # RFC 3605 a=rtcp (RELAY, see above), RFC 5761 mux, RFC 5506, 4585, 3611.
    "rtcp", "rtcp-mux", "rtcp-mux-only", "rtcp-rsize", "rtcp-fb", "rtcp-xr",
    # Keying stays end to end: RFC 4568 SDES, RFC 8122 fingerprint, RFC 4145 setup and
    # connection, RFC 8842 tls-id (dtls-id is its draft name), RFC 9335 cryptex.
    "crypto", "fingerprint", "setup", "connection", "tls-id", "dtls-id", "cryptex",
    # RFC 3312 preconditions (used with 100rel by carriers).
    "curr", "des", "conf",
    # RFC 5888 grouping (GROUP: BUNDLE filtered out), RFC 8285 header extensions, 8851/8853.
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
    "ssrc", "ssrc-group", "msid", "msid-semantic", "label", "tool", "path", "key-mgmt",
    "bundle-only",
})

if KEPT_ATTRIBUTES & NEVER_KEPT or any(name.startswith("ice-") for name in KEPT_ATTRIBUTES):
    raise AssertionError("sdp.privacy: an identity-bearing attribute is on the whitelist")

# RFC 8839 §5: the attributes whose presence means the SDP's author does ICE, so that
# c=0.0.0.0 is a placeholder rather than hold (RFC 8840 §4.2).
ICE_MARKERS = frozenset({"candidate", "ice-ufrag", "ice-pwd", "ice-lite"})

# RFC 3264 §8.4: the addresses of old-style hold; `::` is taken the same way for IP6, as
# several stacks send it.
HOLD_HOSTS = frozenset({"0.0.0.0", "::"})

# RFC 4566 §5.2 username when there is none; RFC 8866 §5.3 session name when there is none.
ORIGIN_USERNAME = "-"
SESSION_NAME = "-"

# Lines other than a=, v=, o=, s= and m= by section; a kind not listed is dropped.
_LINES: Mapping[Section, Mapping[str, Fate]] = {
    Section.SESSION: {"c": Fate.RELAY, "b": Fate.KEEP, "t": Fate.KEEP, "r": Fate.KEEP,
                      "z": Fate.KEEP},
    Section.ACTIVE: {"c": Fate.RELAY, "b": Fate.KEEP},
    Section.DISABLED: {"c": Fate.RELAY, "b": Fate.KEEP},
}

_ATTRIBUTES: Mapping[str, Fate] = {
    **{name: Fate.KEEP for name in KEPT_ATTRIBUTES}, "rtcp": Fate.RELAY, "group": Fate.GROUP}


# Bound once: the call path (sdp/scan.py) asks line_fate of every b=, t=, r=, z= line, and
# in Python 3.11 reading a member off its Enum class goes through EnumType.__getattr__'s
# slow attribute hook (as in b2bua/core.py).
_DROP = Fate.DROP


def line_fate(kind: str, section: Section) -> Fate:
    """The fate of a line that is not a=, v=, o=, s= or m=, by its one-letter type."""
    return _LINES[section].get(kind, _DROP)


def attribute_fate(name: str, section: Section) -> Fate:
    """The fate of a=<name>[:<value>]. Names are compared in lower case: RFC 4566 does not
    say they are case-insensitive, but stacks differ (silenceSupp), and a name sent in
    another case must not slip past the whitelist."""
    fate = _ATTRIBUTES.get(name.lower(), Fate.DROP)
    if fate is Fate.RELAY and section is not Section.ACTIVE:
        return Fate.DROP     # a=rtcp: media-level, and only where there is a relay port
    return fate


def group_crosses(value: str | None) -> bool:
    """Whether a=group:<value> crosses: every group but BUNDLE (RFC 8843, see above)."""
    return (value or "").split(" ", 1)[0].upper() != "BUNDLE"


def attribute_fates(section: Section) -> dict[str, Fate]:
    """`attribute_fate` for every name that is not dropped, as a table (for a lookup per
    line on the call path); a name not in it, in any case, is dropped."""
    return {name: attribute_fate(name, section) for name in _ATTRIBUTES
            if attribute_fate(name, section) is not Fate.DROP}


def addrtype_of(address: str) -> str:
    """RFC 4566 §5.7 addrtype for an address: IP6 when it holds a colon, else IP4 (an FQDN
    counts as IP4, as RFC 4566 §5.7 allows names in c=)."""
    return "IP6" if ":" in address else "IP4"


def relay_connection(address: str) -> str:
    """The value of a c= line (and the address part of a=rtcp) naming the relay."""
    return f"IN {addrtype_of(address)} {address}"


def scrub(sdp: bytes) -> bytes:
    """The rule applied to an SDP whose addresses another relay (rtpengine) has already
    replaced: c= lines, m= lines and a=rtcp on active m= lines stay as that relay wrote them,
    the o= username becomes "-", s= becomes "-", and every other line crosses or not by
    its fate. What crosses keeps its bytes and its line end (CRLF or LF)."""
    kept: list[bytes] = []
    section = Section.SESSION
    for line in sdp.split(b"\n"):
        kind = line[:1]
        if line[1:2] != b"=":
            if not line.strip():
                kept.append(line)     # the empty tail after the last line end
            continue
        if kind == b"a":
            name, colon, value = line[2:].rstrip(b"\r").partition(b":")
            text = name.decode("utf-8", "replace")
            fate = attribute_fate(text, section)
            if fate is Fate.GROUP:
                crosses = group_crosses(value.decode("utf-8", "replace") if colon else None)
                fate = Fate.KEEP if crosses else Fate.DROP
        elif kind == b"m":
            fields = line[2:].split()
            port = fields[1].split(b"/", 1)[0] if len(fields) > 1 else b""
            section = Section.DISABLED if port.strip(b"0") == b"" else Section.ACTIVE
            fate = Fate.KEEP
        elif kind == b"o":
            fields = line[2:].split(b" ", 1)
            line = b"o=" + ORIGIN_USERNAME.encode() + (b" " + fields[1] if len(fields) > 1
                                                       else b"")
            fate = Fate.KEEP
        elif kind == b"s":
            line = b"s=" + SESSION_NAME.encode() + (b"\r" if line.endswith(b"\r") else b"")
            fate = Fate.KEEP
        elif kind == b"v":
            fate = Fate.KEEP
        else:
            fate = line_fate(kind.decode("utf-8", "replace"), section)
        if fate is not Fate.DROP:
            kept.append(line)
    return b"\n".join(kept)
