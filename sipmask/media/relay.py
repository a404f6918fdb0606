"""The embedded RTP/RTCP relay: asyncio datagram sockets, symmetric latching, media timeout.

Each call is a `RelaySession` with two sides, A and B. For each media line (m= in SDP;
one for a voice call) each side owns an RTP socket and an RTCP socket on `media.address`
(an even port and the next one, RFC 3550 §11). A packet that arrives on side A's socket
leaves from side B's matching socket towards B's peer, and the other way round, so each
party only ever sees sipmask's address and ports.

Who a side hears and where its packets go, per socket, RTP and RTCP apart, is the latching
rule `media.latching` chooses (RTP Bleed: a relay that takes media from whoever sends first
gives a call's audio to the first stranger who sprays its ports):
1. `set_remote()` gives the party's address from its SDP (c= and m=, RTCP from a=rtcp or
   RTP + 1, RFC 3605 / RFC 3550 §11) and the IP its SIP signalling came from. Packets for
   the party go to the SDP address until rule 2 or 3 moves them. Before its SDP is known a
   side hears nobody, in every mode but `any`.
2. strict (the default): only packets from exactly that address and port are heard, and
   they are all the party ever gets; anything else is a stranger, dropped and counted. The
   check is one tuple compare on the packet path.
3. signalled_ip (phones behind NAT, whose SDP names a private address): the first packet
   from the SDP's IP or the SIP source IP, any port, latches (symmetric RTP, RFC 4961 §3:
   a party sends from the port it receives on, so replies go to the translated address).
   Another port on the latched IP takes over only once the latched one has been silent for
   `relatch_after_s` (a NAT binding that expired); another IP never does.
   any (unsafe, the old rule): the first source of all latches, and any other takes over
   after that silence.
4. A new SDP address (a re-INVITE moving the media) is signalled, so it moves the accepted
   address and clears the latch: rules 1-3 start again. An SDP address of 0.0.0.0 or port 0
   means "do not send" (RFC 3264 §8.4, §8.2); who may send is left as it was (a holding
   party may still play music), except under `any`, where the latch clears as before.
Packets refused by rules 2-3 count as `strangers` when their address was never signalled,
as `rejected` when it was but another port holds the latch (signalled_ip, any).
Addresses reach the relay as IP literals: EmbeddedBackend resolves SDP host names once per
offer, off the loop, so the packet path never looks a name up.

Media timeout: once both sides have an SDP address, if no RTP arrives on either side for
`timeout_s` the relay calls `on_timeout(call_id)` once; the call engine ends the call with
BYE both ways. `set_hold(True)` (a=sendonly / inactive) suspends the timeout; releasing the
hold restarts the count. RTCP does not count: RFC 3550 §6.2 lets it be 5 s apart or more.

RTCP is scrubbed on its way through (media/rtcp.py): SDES items (CNAME is often
`user@host`, with the number or private address in it) become one CNAME that is a random
pseudonym per call side, BYE reasons and APP packets go, and an RTCP packet that does not
parse is dropped rather than relayed. With rtcp-mux (RFC 5761) RTCP arrives on the RTP
socket and is told apart by its second octet. On SRTP media (RTP/SAVP, RTP/SAVPF, RFC 3711)
RTCP is SRTCP: its CNAME is encrypted, readable by the far end that holds the keys but not
by the relay, so it cannot be scrubbed and is dropped (privacy first; a voice call needs
no RTCP). SRTP itself, and DTLS-SRTP handshakes (first octet 20-63, RFC 7983 §7), pass as
they came: the relay never decrypts anything.

Socket reuse: binding four sockets and registering them with the loop is a tenth of a
call's CPU, so a closed call's port pairs are not closed but kept bound in an idle pool
(at most POOL_MAX_IDLE pairs) and handed to a new call once they have been idle for
POOL_QUARANTINE_S; packets reaching an idle socket are dropped, and a reused one starts
with no peer, no latch and zero counters, as a fresh one would. The quarantine plays the
part of the allocator's "freed pairs go to the back of the queue": a stray packet from the
previous call's party is unlikely that late (its BYE is long done). Pooled pairs count as
free in `ports_in_use`. At a steady rate the pool serves every call once it holds a
quarantine's worth of released pairs (rate x 2 pairs x POOL_QUARANTINE_S, 1,600 at 400
calls/s); `open_session` then takes both sides from it without awaiting anything. A pair
that never reached a call (its open failed halfway) goes back with the quarantine it had.
A closed session keeps its final counters: its sockets are reset and may serve another call.

The packet path (`_Stream.datagram_received`) is kept to attribute reads, one clock read
and one sendto: it is what limits how many calls one core can carry (bench/relay.py).

Media services (prompts, DTMF, recording: media/services.py) reach the packet path only
while one is on for a call, and then through two switches that cost the plain path
nothing: `RelaySession.tap` puts a `_Tap` in front of a side's RTP socket (the transport's
protocol is swapped, so an untapped socket runs the plain path with no extra test), and
`RelaySession.set_muted` unlinks the sides' RTP sockets, so nothing is forwarded between
the parties (counted as `dropped`) while sipmask plays them a prompt. `RelaySession.send`
sends sipmask's own packets from a side's RTP socket to its party. The services attached
to a session (`RelaySession.services`) are closed before its sockets go back to the pool,
on every path that ends a session (close, abandon, Relay.close).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import errno
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, cast

from sipmask.config.schema import MediaConfig
from sipmask.entropy import token_bytes
from sipmask.errors import MediaError, PortsExhausted
from sipmask.media.backend import CallStats, LegStats
from sipmask.media.disk import DiskWriter
from sipmask.media.ports import PortAllocator, PortPair
from sipmask.media.rtcp import scrub

Address = tuple[Any, ...]   # what the socket layer gives: (host, port) or IPv6 4-tuple

# How many port pairs a side tries before giving up when binds keep failing (other
# processes holding ports in our range); each failed pair goes to the back of the queue.
MAX_BIND_ATTEMPTS = 64
# The idle pool of bound port pairs (module docstring): a quarantine's worth at 1,024 calls/s
# (2 pairs a call), so a steady 800 calls/s (issue 13's ladder) binds nothing; at 2,048
# a fifth to a half of its pairs were bound fresh (bench/call_cpu.py at 600-800/s).
POOL_MAX_IDLE = 4096
POOL_QUARANTINE_S = 2.0


class Latching(StrEnum):
    """`media.latching` (module docstring, rules 2-3)."""

    STRICT = "strict"
    SIGNALLED_IP = "signalled_ip"
    ANY = "any"


class Side(StrEnum):
    A = "a"
    B = "b"

    @property
    def other(self) -> Side:
        return Side.B if self is Side.A else Side.A


# Members read for every call (and _admit's for every packet a stranger sends), bound once
# as module globals: in Python 3.11 reading a member off its Enum class goes through
# EnumType.__getattr__'s slow attribute hook (as in b2bua/core.py).
_STRICT, _SIGNALLED_IP, _ANY = Latching.STRICT, Latching.SIGNALLED_IP, Latching.ANY
_SIDE_A, _SIDE_B = Side.A, Side.B
_NO_ONE: frozenset[str] = frozenset()

# What a tap is told of each packet its socket admitted: the datagram, its arrival time on
# the relay's clock, and whether it was forwarded to the other party.
PacketHook = Callable[[bytes, float, bool], None]


class SessionServices(Protocol):
    """What a session closes before its sockets are pooled (media/services.py)."""

    def close(self) -> None:
        """Stop every service (timers, files, taps); called once, on the loop."""
        ...


class _Stream(asyncio.DatagramProtocol):
    """One socket: RTP or RTCP of one side. Holds its own peer, latch and counters."""

    __slots__ = ("_clock", "_latching", "_relatch_after", "bytes_in", "bytes_out", "cname",
                 "dropped", "errors", "is_rtcp", "last_in", "local_port", "packets_in",
                 "packets_out", "peer", "pooled_until", "rejected", "rtcp_dropped", "sdp_peer",
                 "secure", "signalled", "sock", "source", "strangers", "transport", "twin")

    def __init__(self, sock: socket.socket, clock: Callable[[], float],
                 relatch_after_s: float, is_rtcp: bool = False, port: int = 0,
                 latching: Latching = Latching.STRICT) -> None:
        self.sock = sock        # the bound socket the transport reads; we send on it directly
        # The port it is bound to, known from the pair: asking the transport for its
        # sockname makes uvloop build a socket.socket object per transport.
        self.local_port = port or int(sock.getsockname()[1])
        # When the pair's quarantine in the idle pool ends (Relay._forget); a fresh pair
        # was never in a call.
        self.pooled_until = float("-inf")
        self.is_rtcp = is_rtcp
        self.cname = b"-"       # the pseudonym this party's RTCP CNAME becomes (set on link)
        self._clock = clock
        self._relatch_after = relatch_after_s
        self._latching = latching
        self.transport: asyncio.DatagramTransport | None = None
        self.twin: _Stream | None = None      # the same kind of socket on the other side
        self.peer: Address | None = None      # where packets for this party go
        self.sdp_peer: Address | None = None  # the address its SDP gave
        self.signalled = _NO_ONE              # IPs that may latch (signalled_ip)
        # Whom the packet path hears without asking _admit: the SDP address under strict,
        # the latched source otherwise; None until there is one.
        self.source: Address | None = None
        self.secure = False                   # SRTP media: its RTCP is SRTCP (dropped)
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.dropped = self.rejected = self.strangers = self.rtcp_dropped = self.errors = 0
        self.last_in: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: CPython 3.11's selector transport does not subclass it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        now = self._clock()
        if addr != self.source and not self._admit(addr, now):
            return
        size = len(data)
        self.packets_in += 1
        self.bytes_in += size
        self.last_in = now
        out = self.twin
        peer = None if out is None else out.peer
        if peer is None:
            self.dropped += 1
            return
        if self.is_rtcp or (size > 1 and 192 <= data[1] <= 223):   # RTCP, muxed or not
            control = self._control(data)
            if control is None:
                self.rtcp_dropped += 1
                return
            data = control
        assert out is not None
        # Straight to the socket, not transport.sendto: the transport re-checks the address
        # on every call, a quarter of the per-packet cost (bench/relay.py). A full socket
        # buffer or an ICMP error from the peer is a lost datagram, as on the wire.
        try:
            out.sock.sendto(data, peer)
        except OSError:
            out.errors += 1
            return
        out.packets_out += 1
        out.bytes_out += size

    def _admit(self, addr: Address, now: float) -> bool:
        """A packet from someone other than `source`: rules 2-3 of the module docstring.
        True (and the latch moved where the rule allows) to relay it; False counts it."""
        latching = self._latching
        source = self.source
        if latching is _STRICT:
            # The SDP names host and port; an IPv6 source also carries flowinfo and scope.
            if source is not None and addr[:2] == source[:2]:
                self.source = addr
                return True
            self.strangers += 1
            return False
        silent = self.last_in is None or now - self.last_in >= self._relatch_after
        if latching is _SIGNALLED_IP:
            if source is None:
                if addr[0] not in self.signalled:
                    self.strangers += 1
                    return False
            elif addr[0] != source[0]:       # never another IP than the latched one
                self.strangers += 1
                return False
            elif not silent:
                self.rejected += 1
                return False
        elif source is not None and not silent:
            self.rejected += 1
            return False
        self.source = addr
        self.peer = addr
        return True

    def _control(self, data: bytes) -> bytes | None:
        """RTCP on its way through: scrubbed (media/rtcp.py), or None to drop it. SRTCP cannot
        be scrubbed (RFC 3711 §3.4: the CNAME is in the encrypted part): dropped. What passes
        an SRTP stream's RTCP socket unread is DTLS (RFC 7983 §7: first octet 20-63), the
        DTLS-SRTP handshake for the RTCP component (RFC 5764 §4.1)."""
        if self.secure:
            return data if data and 19 < data[0] < 64 else None
        return scrub(data, self.cname)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that went away: counted, never fatal.
        self.errors += 1

    def set_sdp_peer(self, addr: Address | None, signalled: frozenset[str]) -> None:
        """Rules 1 and 4: `addr` is where the party's SDP says it receives (None: send
        nothing), `signalled` the IPs its SDP and SIP came from. A change moves both where
        packets go and who is heard; the same again keeps a latch."""
        if addr is None:
            self.sdp_peer = self.peer = None
            if self._latching is _ANY:
                self.source = None
            return
        if addr == self.sdp_peer and signalled == self.signalled:
            return
        self.sdp_peer = self.peer = addr
        self.signalled = signalled
        self.source = addr if self._latching is _STRICT else None

    def recycle(self) -> None:
        """Back to the state of a freshly bound socket (for the idle pool); the transport
        stays open and anything arriving meanwhile is dropped (no twin)."""
        self.twin = None
        self.peer = self.sdp_peer = self.source = None
        self.signalled = _NO_ONE
        self.secure = False
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.dropped = self.rejected = self.strangers = self.rtcp_dropped = self.errors = 0
        self.last_in = None
        self.cname = b"-"

    def close(self) -> None:
        # The twins point at each other: unlinking lets reference counting free a closed
        # call's streams at once (GcFreezer hides long-lived objects from the cycle
        # collector, so a cycle here would never be freed).
        self.twin = None
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _Tap(asyncio.DatagramProtocol):
    """A side's RTP socket while a media service listens to it: the plain packet path runs
    unchanged (`_Stream.datagram_received`), then `hook` hears each packet the latching
    rules admitted, told apart from strangers by the counter the path moved."""

    __slots__ = ("hook", "stream")

    def __init__(self, stream: _Stream, hook: PacketHook) -> None:
        self.stream = stream
        self.hook = hook

    def datagram_received(self, data: bytes, addr: Address) -> None:
        stream = self.stream
        heard = stream.packets_in
        out = stream.twin
        sent = 0 if out is None else out.packets_out
        stream.datagram_received(data, addr)
        if stream.packets_in != heard:
            assert stream.last_in is not None
            self.hook(data, stream.last_in, out is not None and out.packets_out != sent)

    def error_received(self, exc: Exception) -> None:
        self.stream.error_received(exc)


def _normal_ip(host: str, family: int) -> str | None:
    """`host` written as the socket layer of `family` writes a packet's source, so the
    packet path compares strings as they come; None for the no-address forms (0.0.0.0,
    ::, RFC 3264 §8.4). A name is a ValueError: names are resolved before (EmbeddedBackend)."""
    if family == socket.AF_INET:
        # The common case, at a tenth of ipaddress's cost: glibc's inet_pton takes only
        # the dotted quad without leading zeros, which is the form the kernel gives back.
        try:
            socket.inet_pton(socket.AF_INET, host)
        except OSError:
            pass
        else:
            return None if host == "0.0.0.0" else host
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if family == socket.AF_INET6 and ip.version == 4:
        return f"::ffff:{ip}"           # how a dual-stack socket shows an IPv4 peer
    return str(ip)                       # IPv6: the RFC 5952 form inet_ntop gives


def _address(ip: str, port: int, family: int) -> Address | None:
    if not 0 < port <= 65535:
        return None
    return (ip, port, 0, 0) if family == socket.AF_INET6 else (ip, port)


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _port_taken(exc: OSError) -> bool:
    """Another process holds the port (or it is reserved): try the next pair."""
    return exc.errno in (errno.EADDRINUSE, errno.EACCES)


def _returning(stream: _Stream) -> Callable[[], _Stream]:
    return lambda: stream


@dataclass(frozen=True, slots=True)
class SidePorts:
    """What the SDP towards a party must name: sipmask's address and this side's ports."""

    host: str
    rtp: int
    rtcp: int


@dataclass(slots=True)
class _Media:
    """One media line (m= in SDP) of a call: on each side a port pair and its two sockets.

    Keyed by Side, and as Side is a StrEnum ("a" == Side.A, same hash) a plain "a" or "b"
    finds its entry without a Side() conversion."""

    pairs: dict[Side, PortPair]
    streams: dict[Side, tuple[_Stream, _Stream]]

    def link(self, cnames: tuple[bytes, bytes]) -> None:
        a_rtp, a_rtcp = a = self.streams[_SIDE_A]
        b_rtp, b_rtcp = b = self.streams[_SIDE_B]
        a_rtp.twin, a_rtcp.twin = b
        b_rtp.twin, b_rtcp.twin = a
        a_rtp.cname = a_rtcp.cname = cnames[0]
        b_rtp.cname = b_rtcp.cname = cnames[1]

    def link_rtp(self, linked: bool) -> None:
        """Forward RTP between the sides (True) or not (False: each side's packets are
        counted and dropped, as before the other party is known). RTCP stays linked: it
        carries no audio, and receivers' reports keep flowing."""
        a_rtp = self.streams[_SIDE_A][0]
        b_rtp = self.streams[_SIDE_B][0]
        a_rtp.twin = b_rtp if linked else None
        b_rtp.twin = a_rtp if linked else None


def _bad_side(side: str) -> ValueError:
    """What Side(side) raises for a value that is not a side, for the lookups that skip it."""
    try:
        Side(side)
    except ValueError as exc:
        return exc
    return ValueError(f"{side!r} is not a valid Side")


class RelaySession:
    """One call's media: sides A and B, and per media line an RTP and an RTCP socket on
    each side. Media line 0 is opened with the session; `Relay.add_media` adds more (a
    call with video has two active m= lines)."""

    def __init__(self, call_id: str, address: str, media: _Media, timeout_s: float,
                 on_timeout: Callable[[str], None], clock: Callable[[], float],
                 on_close: Callable[[RelaySession, CallStats], None],
                 family: int = socket.AF_INET) -> None:
        self.call_id = call_id
        self.address = address
        self._family = family
        self._media = [media]
        self._timeout_s = timeout_s
        self._on_timeout = on_timeout
        self._clock = clock
        self._on_close = on_close
        self._remote_set: set[Side] = set()
        self._armed_at: float | None = None
        # Media services for this call (media/services.py), closed before the sockets are
        # pooled; None for the calls that use none.
        self.services: SessionServices | None = None
        self.muted = False
        self.held = False
        self.timed_out = False
        self.closed = False
        # The counters at close: the sockets then go to the pool, reset, maybe to another
        # call, so what this session reports after it closed is kept here.
        self._final: CallStats | None = None
        # One RTCP CNAME pseudonym per party for the whole call (RFC 7022 §4.2: random,
        # 96 bits or more), kept across media lines so receivers can still pair streams.
        # One draw for both: 12 random bytes are 16 base64 characters with no padding, so
        # the halves of 24 encoded are each exactly the encoding of 12.
        both = base64.urlsafe_b64encode(token_bytes(24))
        self._cnames = (both[:16], both[16:])
        media.link(self._cnames)

    @property
    def media_count(self) -> int:
        return len(self._media)

    @property
    def pairs(self) -> list[PortPair]:
        return [pair for media in self._media for pair in media.pairs.values()]

    def _add(self, media: _Media) -> int:
        media.link(self._cnames)
        if self.muted:
            media.link_rtp(False)
        self._media.append(media)
        return len(self._media) - 1

    def _remove_from(self, count: int) -> list[_Media]:
        """Take away the media lines from index `count` on (Relay.drop_media)."""
        removed = self._media[count:]
        del self._media[count:]
        return removed

    def _streams(self, side: Side | str, index: int) -> tuple[_Stream, _Stream]:
        try:
            return self._media[index].streams[side]      # type: ignore[index]
        except KeyError:
            raise _bad_side(side) from None

    def local(self, side: Side | str, index: int = 0) -> SidePorts:
        """Sipmask's address and ports that `side`'s party must send to (for its SDP)."""
        rtp, rtcp = self._streams(side, index)
        return SidePorts(self.address, rtp.local_port, rtcp.local_port)

    def set_remote(self, side: Side | str, host: str, rtp_port: int,
                   rtcp_port: int | None = None, index: int = 0, *,
                   rtcp_host: str | None = None, sip_source: str | None = None,
                   secure: bool = False) -> None:
        """The party's media address from its SDP: `host` (an IP, never a name) and
        `rtp_port` from c= and m=; RTCP at `rtcp_host`:`rtcp_port` from RFC 3605 a=rtcp,
        else at host and RTP + 1 (RFC 3550 §11). Port 0 or 0.0.0.0: send nothing.
        `sip_source` is the IP the party's signalling came from (media.latching
        signalled_ip); `secure`: an SRTP profile, whose RTCP is dropped (module docstring).
        Raises ValueError for a host that is not an IP literal."""
        rtp, rtcp = self._streams(side, index)
        family = self._family
        ip = _normal_ip(host, family)
        rtp_peer = None if ip is None else _address(ip, rtp_port, family)
        if rtp_peer is None or ip is None:
            rtp.set_sdp_peer(None, _NO_ONE)
            rtcp.set_sdp_peer(None, _NO_ONE)
        else:
            sip_ip = None if sip_source is None else _normal_ip(sip_source, family)
            signalled = frozenset((ip,) if sip_ip is None else (ip, sip_ip))
            if rtcp_host is None:       # RTCP at the RTP host (the common case)
                rtcp_ip: str | None = ip
                rtcp_signalled = signalled
            else:
                rtcp_ip = _normal_ip(rtcp_host, family)
                rtcp_signalled = signalled if rtcp_ip is None else signalled | {rtcp_ip}
            rtp.set_sdp_peer(rtp_peer, signalled)
            rtcp.set_sdp_peer(
                None if rtcp_ip is None else _address(rtcp_ip, rtcp_port or rtp_port + 1, family),
                rtcp_signalled)
        rtp.secure = rtcp.secure = secure
        if self._armed_at is None:
            self._remote_set.add(_SIDE_A if side == _SIDE_A else _SIDE_B)
            if len(self._remote_set) == 2:
                self._armed_at = self._clock()

    def set_hold(self, held: bool) -> None:
        """Hold suspends the media timeout; leaving hold restarts its count from now."""
        if self.held and not held and self._armed_at is not None:
            self._armed_at = self._clock()
        self.held = held

    def check_timeout(self, now: float) -> bool:
        """Fire `on_timeout(call_id)` once if no RTP came from either side for timeout_s."""
        if self.timed_out or self.held or self._armed_at is None or self.closed:
            return False
        last = self._armed_at
        for media in self._media:
            for rtp, _ in media.streams.values():
                if rtp.last_in is not None and rtp.last_in > last:
                    last = rtp.last_in
        if now - last < self._timeout_s:
            return False
        self.timed_out = True
        self._on_timeout(self.call_id)
        return True

    def leg_stats(self, side: Side | str) -> LegStats:
        """One party's counters, all media lines and RTP with RTCP summed."""
        self._streams(side, 0)                           # a bad side raises here
        if self._final is not None:
            return self._final.a if side == _SIDE_A else self._final.b
        # One pass in plain additions: it runs twice at every call's end.
        packets_in = bytes_in = packets_out = bytes_out = dropped = rejected = 0
        strangers = rtcp_dropped = 0
        last: float | None = None
        for media in self._media:
            rtp, rtcp = media.streams[side]              # type: ignore[index]
            packets_in += rtp.packets_in + rtcp.packets_in
            bytes_in += rtp.bytes_in + rtcp.bytes_in
            packets_out += rtp.packets_out + rtcp.packets_out
            bytes_out += rtp.bytes_out + rtcp.bytes_out
            dropped += rtp.dropped + rtcp.dropped
            rejected += rtp.rejected + rtcp.rejected
            strangers += rtp.strangers + rtcp.strangers
            rtcp_dropped += rtp.rtcp_dropped + rtcp.rtcp_dropped
            if rtp.last_in is not None and (last is None or rtp.last_in > last):
                last = rtp.last_in
        return LegStats(packets_in, bytes_in, packets_out, bytes_out, dropped, rejected, last,
                        strangers, rtcp_dropped)

    def stats(self) -> CallStats:
        if self._final is not None:
            return self._final
        return CallStats(self.call_id, self.leg_stats(_SIDE_A), self.leg_stats(_SIDE_B),
                         self.timed_out)

    def peer(self, side: Side | str, index: int = 0) -> Address | None:
        """Where RTP for `side`'s party goes now (the SDP address or the latched one)."""
        return self._streams(side, index)[0].peer

    def remote_known(self, side: Side | str) -> bool:
        """Whether `side`'s SDP has been given (set_remote), once for the session."""
        return (_SIDE_A if side == _SIDE_A else _SIDE_B) in self._remote_set

    def tap(self, side: Side | str, index: int, hook: PacketHook | None) -> None:
        """Let `hook` hear what `side`'s party sends on media line `index` (RTP socket,
        after the latching rules), or stop (None). The plain path pays nothing untapped."""
        stream = self._streams(side, index)[0]
        transport = stream.transport
        if transport is None:
            return
        transport.set_protocol(stream if hook is None else _Tap(stream, hook))

    def set_muted(self, muted: bool) -> None:
        """Stop (True) or resume (False) forwarding RTP between the parties, every media
        line; a line added meanwhile follows. Each side's own packets still reach a tap."""
        if muted == self.muted or self.closed:
            return
        self.muted = muted
        for media in self._media:
            media.link_rtp(not muted)

    def send(self, side: Side | str, index: int, packet: bytes) -> bool:
        """Send sipmask's own `packet` (a prompt) from `side`'s RTP socket on line `index`
        to its party's address (the SDP's, or the latched one); False when there is none
        or the socket refused it (counted as an error, as a lost datagram)."""
        stream = self._streams(side, index)[0]
        peer = stream.peer
        if peer is None or self.closed:
            return False
        try:
            stream.sock.sendto(packet, peer)
        except OSError:
            stream.errors += 1
            return False
        return True

    def close(self) -> CallStats:
        """Close the sockets and give the ports back. Safe to call twice. The sockets
        close on the loop's next turn (asyncio transports defer it). Its counters, here
        and from stats() afterwards, are those at the first close."""
        if self._final is not None:
            return self._final
        self._close_services()
        final = self._final = self.stats()
        self.closed = True
        self._on_close(self, final)      # the relay pools or closes the sockets (_forget)
        return final

    def _close_services(self) -> None:
        """Services stop (timers, files) and give the sockets back their plain protocol
        before anything else may use them."""
        services, self.services = self.services, None
        if services is not None:
            services.close()


@dataclass
class ServiceCounters:
    """What the media services (media/services.py) did over the relay's life."""

    prompt_packets: int = 0
    prompts_unplayable: int = 0   # asked for on a leg with no PCMU/PCMA or no address
    digits: int = 0
    recordings_started: int = 0
    recordings_failed: int = 0    # the file could not be made, or a write failed


@dataclass(frozen=True, slots=True)
class RelayStats:
    """For metrics: gauges and counters over the relay's life."""

    active_sessions: int
    sessions_opened: int
    timeouts: int
    packets_relayed: int
    bytes_relayed: int
    dropped: int
    rejected: int
    ports_in_use: int
    ports_skipped: int
    ports_idle: int = 0      # bound, pooled for reuse (module docstring), not in a call
    strangers: int = 0       # from an address no SDP or SIP source named (media.latching)
    rtcp_dropped: int = 0    # RTCP not relayed: unparseable, or SRTCP
    prompt_packets: int = 0  # RTP packets of prompts sent (media/services.py)
    prompts_unplayable: int = 0
    digits: int = 0          # keys heard in media (RFC 4733 and in-band)
    recordings_started: int = 0
    recordings_failed: int = 0
    recording_queue_bytes: int = 0       # audio waiting for the disk thread (media/disk.py)
    recording_writes_dropped: int = 0    # refused by a full queue: written back as silence
    recording_bytes_dropped: int = 0


class Relay:
    """Opens and closes sessions, owns the port allocator, sweeps for media timeouts.

    `clock` is the monotonic time source (default: the running loop's `time`). The timeout
    sweep starts with the first session; tests on a fake clock pass `sweep=False` and call
    `check_timeouts()` themselves.
    """

    def __init__(self, config: MediaConfig, *, on_timeout: Callable[[str], None],
                 clock: Callable[[], float] | None = None, timeout_s: float | None = None,
                 relatch_after_s: float = 2.0, sweep_interval_s: float | None = None,
                 sweep: bool = True) -> None:
        self.address = config.address
        self._family = socket.AF_INET6 if _is_ipv6(config.address) else socket.AF_INET
        self.allocator = PortAllocator(config.ports)
        self.timeout_s = float(config.timeout_s if timeout_s is None else timeout_s)
        self.relatch_after_s = relatch_after_s
        self.latching = Latching(config.latching)
        self._on_timeout = on_timeout
        self._clock = clock
        self._sweep_interval = sweep_interval_s or min(1.0, self.timeout_s / 4)
        self._sessions: dict[str, RelaySession] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._sweep_enabled = sweep
        self._opened = 0
        self._timeouts = 0
        # Totals of closed sessions, so counters survive their sessions.
        self._closed_packets = self._closed_bytes = self._closed_dropped = 0
        self._closed_rejected = self._closed_strangers = self._closed_rtcp_dropped = 0
        # (reusable from, pair, (rtp, rtcp)) in release order (module docstring).
        self._idle: collections.deque[tuple[float, PortPair, tuple[_Stream, _Stream]]] = \
            collections.deque()
        self.pool_reused = 0
        self.services = ServiceCounters()
        # Recording files are made, written and closed on this thread, never on the loop.
        self.disk = DiskWriter()

    @property
    def family(self) -> int:
        """The address family of the relay's sockets (media.address)."""
        return self._family

    @property
    def clock(self) -> Callable[[], float]:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock

    async def start(self) -> None:
        """Start the timeout sweep (one task for all sessions)."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            self.check_timeouts()

    def check_timeouts(self, now: float | None = None) -> list[str]:
        """Fire on_timeout for each silent session; returns their call ids."""
        now = self.clock() if now is None else now
        fired = [s.call_id for s in list(self._sessions.values()) if s.check_timeout(now)]
        self._timeouts += len(fired)
        return fired

    async def open_session(self, call_id: str) -> RelaySession:
        """Bind both sides' sockets for media line 0. Raises PortsExhausted when no pair
        can be had."""
        if call_id in self._sessions:
            raise MediaError(f"a relay session for call {call_id} is already open")
        if self._sweeper is None and self._sweep_enabled:
            await self.start()
        # The steady state: both sides from the idle pool, no await (a coroutine less per
        # side). The pool is in release order, so if its second pair is out of quarantine
        # so is the first.
        idle = self._idle
        if len(idle) > 1 and idle[1][0] <= self.clock():
            _, pair_a, streams_a = idle.popleft()
            _, pair_b, streams_b = idle.popleft()
            self.pool_reused += 2
            media = _Media({_SIDE_A: pair_a, _SIDE_B: pair_b},
                           {_SIDE_A: streams_a, _SIDE_B: streams_b})
        else:
            media = await self._bind_media()
        session = RelaySession(call_id, self.address, media, self.timeout_s,
                               self._on_timeout, self.clock, self._forget, self._family)
        self._sessions[call_id] = session
        self._opened += 1
        return session

    async def add_media(self, session: RelaySession) -> int:
        """Bind one more media line for `session`; returns its index."""
        if session.closed:
            raise MediaError(f"relay session for call {session.call_id} is closed")
        media = await self._bind_media()
        if session.closed:          # closed while we were binding
            for side, streams in media.streams.items():
                self._unused(media.pairs[side], streams)
            raise MediaError(f"relay session for call {session.call_id} is closed")
        return session._add(media)

    def drop_media(self, session: RelaySession, count: int) -> None:
        """Give back `session`'s media lines from index `count` on: lines an offer added
        and then could not use. No party has seen their ports, so they go back to the pool
        with the quarantine they had. Nothing to do once the session is closed (its close
        pooled them)."""
        if session.closed:
            return
        for media in session._remove_from(max(1, count)):
            for side, streams in media.streams.items():
                self._unused(media.pairs[side], streams)

    def abandon(self, session: RelaySession) -> None:
        """Give back all of a session that never reached a call (its first offer failed
        after opening it): its pairs as `drop_media` gives lines back, no counters kept."""
        if session.closed:
            return
        session._close_services()
        session.closed = True
        session._final = CallStats(session.call_id, LegStats(), LegStats())
        self._sessions.pop(session.call_id, None)
        for media in session._remove_from(0):
            for side, streams in media.streams.items():
                self._unused(media.pairs[side], streams)

    async def _bind_media(self) -> _Media:
        clock = self.clock
        pairs: dict[Side, PortPair] = {}
        streams: dict[Side, tuple[_Stream, _Stream]] = {}
        try:
            for side in (_SIDE_A, _SIDE_B):
                pairs[side], streams[side] = await self._bind_side(clock)
        except BaseException:
            for side, pair_streams in streams.items():
                self._unused(pairs[side], pair_streams)
            raise
        return _Media(pairs, streams)

    async def _bind_side(self, clock: Callable[[], float]
                         ) -> tuple[PortPair, tuple[_Stream, _Stream]]:
        idle = self._idle
        if idle and (idle[0][0] <= clock() or not self.allocator.available):
            # Quarantine over, or nothing else left: a pooled pair beats refusing a call.
            return self._reuse()
        loop = asyncio.get_running_loop()
        for _ in range(min(MAX_BIND_ATTEMPTS, max(1, self.allocator.available))):
            pair = self.allocator.allocate()
            try:
                socks = self._bind_pair(pair)
            except OSError as exc:
                if _port_taken(exc):
                    self.allocator.skip(pair)
                    continue
                self.allocator.free(pair)
                if idle:
                    # No socket to be had (EMFILE, ENOBUFS): as when the range runs out,
                    # a pooled pair beats refusing the call.
                    return self._reuse()
                raise MediaError(f"cannot bind {self.address}:{pair.rtp}: {exc}") from exc
            streams = (_Stream(socks[0], clock, self.relatch_after_s, port=pair.rtp,
                               latching=self.latching),
                       _Stream(socks[1], clock, self.relatch_after_s, is_rtcp=True,
                               port=pair.rtcp, latching=self.latching))
            try:
                for sock, stream in zip(socks, streams, strict=True):
                    await loop.create_datagram_endpoint(_returning(stream), sock=sock)
            except BaseException:
                for sock, stream in zip(socks, streams, strict=True):
                    stream.close()
                    sock.close()
                self.allocator.free(pair)
                raise
            return pair, streams
        if idle:
            return self._reuse()
        raise PortsExhausted(f"no bindable RTP/RTCP pair in {self.allocator.range} on "
                             f"{self.address} ({self.allocator.available} free pairs, "
                             f"{self.allocator.skipped} failed to bind)")

    def _reuse(self) -> tuple[PortPair, tuple[_Stream, _Stream]]:
        _, pair, streams = self._idle.popleft()
        self.pool_reused += 1
        return pair, streams

    def _bind_pair(self, pair: PortPair) -> tuple[socket.socket, socket.socket]:
        """Bind RTP and RTCP ourselves and hand the sockets to the loop: uvloop 0.19-0.21
        leaks a transport when its own bind in create_datagram_endpoint fails."""
        socks: list[socket.socket] = []
        try:
            for port in (pair.rtp, pair.rtcp):
                sock = socket.socket(self._family, socket.SOCK_DGRAM)
                socks.append(sock)
                sock.setblocking(False)
                sock.bind((self.address, port))
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks[0], socks[1]

    def session(self, call_id: str) -> RelaySession | None:
        return self._sessions.get(call_id)

    def close_session(self, call_id: str) -> CallStats | None:
        """Close a call's session; its final counters, or None if there was none."""
        session = self._sessions.get(call_id)
        return None if session is None else session.close()

    def _forget(self, session: RelaySession, final: CallStats) -> None:
        """The session closed with `final` counters: keep its totals, pool its pairs."""
        self._sessions.pop(session.call_id, None)
        a, b = final.a, final.b
        self._closed_packets += a.packets_out + b.packets_out
        self._closed_bytes += a.bytes_out + b.bytes_out
        self._closed_dropped += a.dropped + b.dropped
        self._closed_rejected += a.rejected + b.rejected
        self._closed_strangers += a.strangers + b.strangers
        self._closed_rtcp_dropped += a.rtcp_dropped + b.rtcp_dropped
        reusable_from = self.clock() + POOL_QUARANTINE_S
        for media in session._media:
            for side, streams in media.streams.items():
                self._pool(media.pairs[side], streams, reusable_from)

    def _unused(self, pair: PortPair, streams: tuple[_Stream, _Stream]) -> None:
        """A pair bound (or taken from the pool) for a media line that never came to be
        (the other side failed, or the call closed meanwhile): no new party has seen its
        ports, so it goes back to the pool with the quarantine it had (none for a fresh
        pair) rather than being closed and bound again by the next call."""
        self._pool(pair, streams, streams[0].pooled_until)

    def _pool(self, pair: PortPair, streams: tuple[_Stream, _Stream], until: float) -> None:
        """Reset a pair and keep it idle until `until`, in order of that time (open_session
        relies on it); closed instead when the pool is full or a socket already is."""
        rtp, rtcp = streams
        idle = self._idle
        if (len(idle) >= POOL_MAX_IDLE or rtp.transport is None
                or rtcp.transport is None):
            self._discard(pair, streams)
            return
        rtp.recycle()
        rtcp.recycle()
        rtp.pooled_until = until
        if not idle or idle[-1][0] <= until:
            idle.append((until, pair, streams))     # a released pair: the newest time
            return
        # An unused pair keeps an older time; one taken from the pool came from near its
        # front, so the walk is short.
        at = 0
        while idle[at][0] < until:
            at += 1
        idle.insert(at, (until, pair, streams))

    def _discard(self, pair: PortPair, streams: tuple[_Stream, _Stream]) -> None:
        """Close a pair's sockets and give its ports back to the allocator."""
        for stream in streams:
            stream.close()
        self.allocator.free(pair)

    def stats(self) -> RelayStats:
        packets, octets = self._closed_packets, self._closed_bytes
        dropped, rejected = self._closed_dropped, self._closed_rejected
        strangers, rtcp_dropped = self._closed_strangers, self._closed_rtcp_dropped
        for session in self._sessions.values():
            s = session.stats()
            packets += s.packets_relayed
            octets += s.a.bytes_out + s.b.bytes_out
            dropped += s.a.dropped + s.b.dropped
            rejected += s.a.rejected + s.b.rejected
            strangers += s.a.strangers + s.b.strangers
            rtcp_dropped += s.a.rtcp_dropped + s.b.rtcp_dropped
        return RelayStats(
            active_sessions=len(self._sessions), sessions_opened=self._opened,
            timeouts=self._timeouts, packets_relayed=packets, bytes_relayed=octets,
            dropped=dropped, rejected=rejected,
            ports_in_use=(self.allocator.in_use - len(self._idle)) * 2,
            ports_skipped=self.allocator.skipped, ports_idle=len(self._idle) * 2,
            strangers=strangers, rtcp_dropped=rtcp_dropped,
            prompt_packets=self.services.prompt_packets,
            prompts_unplayable=self.services.prompts_unplayable,
            digits=self.services.digits,
            recordings_started=self.services.recordings_started,
            recordings_failed=self.services.recordings_failed,
            recording_queue_bytes=self.disk.stats.queued_bytes,
            recording_writes_dropped=self.disk.stats.dropped_writes,
            recording_bytes_dropped=self.disk.stats.dropped_bytes)

    async def close(self) -> None:
        """Close every session, then stop the sweep.

        Sessions close before the first await: a prompt or recording timer due while
        close() waits for the sweeper would otherwise run, and arm another."""
        for session in list(self._sessions.values()):
            session.close()
        while self._idle:
            _, pair, streams = self._idle.popleft()
            self._discard(pair, streams)
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await self.disk.close()         # the recordings the sessions closed, written out
        # Transports close their sockets on the next loop iteration; let it run so the
        # ports are free when close() returns, even if the loop stops right after.
        await asyncio.sleep(0)
