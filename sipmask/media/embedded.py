"""MediaBackend over the embedded relay: a thin adapter from SDP bodies to relay sessions.

The SDP work is two injected callables, so this adapter is tested with simple lambdas:
    parse_endpoints(sdp) -> [MediaEndpoint | None, ...]     one entry per m= line; None for
                                                            a stream at port 0. Raises
                                                            SipError (400, 488) for a body
                                                            `rewrite` would refuse
    rewrite(sdp, address, ports, leg_key) -> bytes          c=/o= to `address`, each m= line
                                                            not at port 0 to the next of
                                                            `ports`, in order
and optionally is_hold(sdp) -> bool (a=sendonly / a=inactive suspends the media timeout).
`leg_key` ("<call id>:<leg>") names the leg the body is for, stable for the call's life, so
`rewrite` can keep that leg's o= sess-id and bump its version (RFC 3264 §8).
Without them, `sipmask_sdp()` builds the three from sipmask.sdp.scan, the one SDP path.

Each enabled m= line gets its own relay media line (its own port pairs on both sides).

Media services (backend.py: open_early, play, collect_digits, start_recording...) run on
the relay in media/services.py, one CallServices per call that asks for one. The adapter
keeps each leg's last SDP, so the services know the leg's audio line and codecs, and tells
them when an offer or answer changes either, and when the call first has both legs (the
prompts then stop: the call is bridged). `open_early` opens the session on the caller's
side alone and answers with sipmask's own SDP (media/early_media.py); the later offer and
answer for leg B fill in the other side of the same session.

An offer or answer is read whole before anything is opened (DESIGN.md rule 13): the body is
parsed and checked (400, 488), its m= lines counted (488 over MAX_MEDIA_LINES), and any host
name in c= or a=rtcp resolved, once per body, off the event loop and within
`resolve_timeout_s` (488 when it fails or is late). So a refused body leaves no port behind.
What is opened after that and then fails is given back on the spot: a session this offer
opened is abandoned, media lines it added are dropped, and the call's addresses are only
changed once everything has worked.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

from sipmask.config.schema import MediaConfig
from sipmask.errors import MediaError
from sipmask.media.backend import (
    CallStats,
    DigitCallback,
    Leg,
    LegStats,
    Playback,
    RecordingOutcome,
    SinkFactory,
    check_media_lines,
    other_leg,
)
from sipmask.media.early_media import answer_sdp, offered_streams, plan
from sipmask.media.relay import Relay
from sipmask.media.services import CallServices, LegMedia, PromptTicker, leg_media
from sipmask.media.wav import Audio
from sipmask.sdp import scan
from sipmask.sdp.endpoints import MediaEndpoint
from sipmask.sdp.errors import SdpError
from sipmask.sdp.origin import OriginCounter, new_session_id

ParseEndpoints = Callable[[bytes], Sequence[MediaEndpoint | None]]
Rewrite = Callable[[bytes, str, list[int], str], bytes]
IsHold = Callable[[bytes], bool]
# A host name to one IP literal; raises OSError when it does not resolve.
Resolve = Callable[[str], Awaitable[str]]

# How long an offer may wait for its host names (a slow DNS must not hold a call's setup,
# let alone the event loop), and how many lookups may be running at once. loop.getaddrinfo
# runs in the loop's default thread pool, which the server's heartbeat and store sweep also
# use; a lookup past its deadline cannot be stopped, so it keeps its place until it ends
# and a stalled resolver ties up at most MAX_LOOKUPS threads, never the whole pool.
RESOLVE_TIMEOUT_S = 2.0
MAX_LOOKUPS = 4


class EmbeddedBackend:
    def __init__(self, config: MediaConfig, *, on_timeout: Callable[[str], None],
                 parse_endpoints: ParseEndpoints | None = None, rewrite: Rewrite | None = None,
                 is_hold: IsHold | None = None, relay: Relay | None = None,
                 resolve: Resolve | None = None,
                 resolve_timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
        self._sdp: _SipmaskSdp | None = None
        if parse_endpoints is None or rewrite is None:
            default = self._sdp = sipmask_sdp()
            parse_endpoints = parse_endpoints or default.parse_endpoints
            rewrite = rewrite or default.rewrite
            is_hold = is_hold or default.is_hold
            self._forget: Callable[[str], None] | None = default.forget
        else:
            self._forget = None
        self.relay = relay or Relay(config, on_timeout=on_timeout)
        self._parse_endpoints = parse_endpoints
        self._rewrite = rewrite
        self._is_hold = is_hold
        self._resolve = resolve or self._getaddrinfo
        self._resolve_timeout_s = resolve_timeout_s
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)
        self._looking: set[asyncio.Task[str]] = set()    # lookups running, late ones too
        self._held: dict[str, set[str]] = {}   # call id -> legs whose last SDP was hold
        self._bodies: dict[str, dict[str, bytes]] = {}   # call id -> leg -> its last SDP
        self._services: dict[str, CallServices] = {}     # calls that use media services
        self._ticker = PromptTicker(self.relay.clock)     # one loop timer for every prompt

    async def start(self) -> None:
        """Nothing to open before the first call: the relay binds ports per call."""

    async def offer(self, call_id: str, leg: str, sdp: bytes, *,
                    sip_source: str | None = None) -> bytes:
        return await self._apply(call_id, leg, sdp, sip_source, may_open=True)

    async def answer(self, call_id: str, leg: str, sdp: bytes, *,
                     sip_source: str | None = None) -> bytes:
        if self.relay.session(call_id) is None:
            raise MediaError(f"answer for call {call_id} without an offer")
        return await self._apply(call_id, leg, sdp, sip_source, may_open=False)

    async def _apply(self, call_id: str, leg: str, sdp: bytes, sip_source: str | None, *,
                     may_open: bool) -> bytes:
        """Point `leg`'s side at its SDP addresses; the body for the other leg names the
        other side's relay ports, so each party sends to its own side of the relay."""
        towards = other_leg(leg)
        if sip_source is not None and not _is_ip(sip_source):
            raise ValueError("sip_source must be the IP the signalling came from")
        # Everything that can refuse the body runs before anything is opened.
        found = self._parse_endpoints(sdp)
        check_media_lines(len(found))
        held = self._is_hold(sdp) if self._is_hold is not None else None
        before = session = self.relay.session(call_id)
        enabled = [e for e in found if e is not None]
        names = _host_names(enabled)
        if names:       # most bodies name IPs: no lookup, nothing to await
            enabled = await self._resolved(enabled, names)
            session = self.relay.session(call_id)
        if session is not before or (session is None and not may_open):
            # The call ended (BYE, media timeout) while its names were looked up.
            raise MediaError(f"relay session for call {call_id} closed during the offer")
        opened = session is None
        if session is None:
            session = await self.relay.open_session(call_id)
        had = session.media_count
        try:
            while session.media_count < len(enabled):
                await self.relay.add_media(session)
            ports = [session.local(towards, index).rtp for index in range(len(enabled))]
            body = self._rewrite(sdp, self.relay.address, ports, f"{call_id}:{towards}")
        except BaseException:
            if opened:
                self.relay.abandon(session)
                if self._forget is not None:
                    self._forget(call_id)
            else:
                self.relay.drop_media(session, had)
            raise
        for index, endpoint in enumerate(enabled):
            session.set_remote(leg, endpoint.host, endpoint.port, endpoint.rtcp_port, index,
                               rtcp_host=endpoint.rtcp_host, sip_source=sip_source,
                               secure=endpoint.secure)
        if held is not None:
            holding = self._held.get(call_id)
            if held:
                if holding is None:
                    holding = self._held[call_id] = set()
                holding.add(leg)
            elif holding is not None:
                holding.discard(leg)
            session.set_hold(bool(holding))
        bodies = self._bodies.get(call_id)
        if bodies is None:
            self._bodies[call_id] = {leg: sdp}
        else:
            bodies[leg] = sdp
        services = self._services.get(call_id)
        if services is not None:
            services.refresh()
            if session.remote_known("a") and session.remote_known("b"):
                services.bridge()
        return body

    # -- media services (backend.py) ------------------------------------------------------
    async def open_early(self, call_id: str, leg: str, offer_sdp: bytes, *,
                         sip_source: str | None = None) -> bytes | None:
        """The caller's side of the session alone, answered with sipmask's own SDP for a
        183 (media/early_media.py): the first plain-RTP audio stream with PCMU/PCMA gets
        the relay port of `leg`'s side on its relay line, every other stream port 0. None,
        and nothing opened, when no stream can carry a prompt. Refuses a body as `offer`
        does (400, 488) before anything is opened."""
        side = _leg(leg)
        if sip_source is not None and not _is_ip(sip_source):
            raise ValueError("sip_source must be the IP the signalling came from")
        found = self._parse_endpoints(offer_sdp)
        check_media_lines(len(found))
        streams = offered_streams(self._scan(offer_sdp))
        chosen = plan(streams)
        if chosen is None:
            return None
        if self.relay.session(call_id) is not None:
            raise MediaError(f"a relay session for call {call_id} is already open")
        endpoint = found[chosen.index]
        if endpoint is None:        # plan() takes only streams with a port
            return None
        # Relay lines are the body's m= lines that are not at port 0, in order.
        line = sum(1 for e in found[:chosen.index] if e is not None)
        names = _host_names([endpoint])
        (resolved,) = await self._resolved([endpoint], names) if names else (endpoint,)
        if self.relay.session(call_id) is not None:
            raise MediaError(f"a relay session for call {call_id} opened meanwhile")
        session = await self.relay.open_session(call_id)
        try:
            while session.media_count <= line:
                await self.relay.add_media(session)
            body = answer_sdp(streams, chosen, port=session.local(side, line).rtp,
                              origin=self._origin(f"{call_id}:{side}"))
        except BaseException:
            self.relay.abandon(session)
            if self._forget is not None:
                self._forget(call_id)
            raise
        session.set_remote(side, resolved.host, resolved.port, resolved.rtcp_port, line,
                           rtcp_host=resolved.rtcp_host, sip_source=sip_source,
                           secure=resolved.secure)
        self._bodies[call_id] = {side: offer_sdp}
        return body

    async def play(self, call_id: str, leg: str, audio: Audio, *,
                   loop: bool = False) -> Playback:
        return self._services_for(call_id).play(_leg(leg), audio, loop=loop)

    async def stop_play(self, call_id: str, leg: str) -> None:
        services = self._services.get(call_id)
        if services is not None:
            services.stop_play(_leg(leg))

    async def collect_digits(self, call_id: str, leg: str, on_digit: DigitCallback, *,
                             inband: bool = False) -> None:
        self._services_for(call_id).collect_digits(_leg(leg), on_digit, inband=inband)

    async def stop_digits(self, call_id: str, leg: str) -> None:
        services = self._services.get(call_id)
        if services is not None:
            services.stop_digits(_leg(leg))

    async def start_recording(self, call_id: str, open_sink: SinkFactory) -> None:
        """Returns once the file is made on the relay's disk thread, or its failure is
        counted (media/services.py)."""
        sink = self._services_for(call_id).start_recording(open_sink)
        await sink.opened

    async def stop_recording(self, call_id: str) -> RecordingOutcome | None:
        services = self._services.get(call_id)
        if services is None:
            return None
        services.stop_recording()
        return await services.settled()

    def _services_for(self, call_id: str) -> CallServices:
        """The call's services, made (and attached to its session) on first use."""
        services = self._services.get(call_id)
        if services is not None and not services.closed:
            return services
        session = self.relay.session(call_id)
        if session is None:
            raise MediaError(f"no media session for call {call_id}")
        services = CallServices(session, clock=self.relay.clock,
                                describe=lambda leg: self._describe(call_id, leg),
                                counters=self.relay.services, disk=self.relay.disk,
                                ticker=self._ticker)
        services.bridged = session.remote_known("a") and session.remote_known("b")
        session.services = services
        self._services[call_id] = services
        return services

    def _describe(self, call_id: str, leg: Leg) -> LegMedia | None:
        bodies = self._bodies.get(call_id, {})
        own = bodies.get(leg)
        if own is None:
            return None
        other = bodies.get(other_leg(leg))
        return leg_media(self._scan(own), None if other is None else self._scan(other))

    def _scan(self, sdp: bytes) -> scan.Scan:
        return self._sdp.read(sdp) if self._sdp is not None else scan.scan(sdp)

    def _origin(self, leg_key: str) -> OriginCounter:
        """The o= counter of the leg a body goes to (shared with `rewrite` by default)."""
        if self._sdp is not None:
            return self._sdp.origin(leg_key, self.relay.address)
        return OriginCounter(address=self.relay.address, sess_id=new_session_id())

    async def _resolved(self, endpoints: list[MediaEndpoint],
                        names: set[str]) -> list[MediaEndpoint]:
        """`endpoints` with every host name (`names`, from _host_names) replaced by its
        address: each name looked up once, all of them within resolve_timeout_s. SdpError
        (488) when one fails or is late; its reason names no host (a name may hold a
        number)."""
        ordered = sorted(names)
        loop = asyncio.get_running_loop()
        lookups = [loop.create_task(self._look_up(name)) for name in ordered]
        for task in lookups:
            self._looking.add(task)
            task.add_done_callback(self._looked_up)
        try:
            # Shielded: the deadline ends the wait, not the lookups (see MAX_LOOKUPS).
            addresses = await asyncio.wait_for(asyncio.shield(asyncio.gather(*lookups)),
                                               self._resolve_timeout_s)
            for address in addresses:
                ipaddress.ip_address(address)    # a resolver must give an IP (ValueError)
        except TimeoutError:
            raise SdpError("Not Acceptable Here: SDP host name not resolved in time") from None
        except (OSError, ValueError) as exc:
            raise SdpError("Not Acceptable Here: SDP host name does not resolve") from exc
        found = dict(zip(ordered, addresses, strict=True))
        return [replace(e, host=found.get(e.host, e.host),
                        rtcp_host=None if e.rtcp_host is None
                        else found.get(e.rtcp_host, e.rtcp_host)) for e in endpoints]

    async def _look_up(self, name: str) -> str:
        async with self._lookups:
            return await self._resolve(name)

    def _looked_up(self, task: asyncio.Task[str]) -> None:
        self._looking.discard(task)
        if not task.cancelled():
            task.exception()     # retrieved: a late lookup's failure was already answered

    async def _getaddrinfo(self, host: str) -> str:
        """The default resolver: the system's, in the loop's thread pool (never on the loop
        itself), for the relay's address family."""
        family = self.relay.family
        flags = socket.AI_V4MAPPED if family == socket.AF_INET6 else 0
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, None, family=family, type=socket.SOCK_DGRAM, flags=flags)
        if not infos:
            raise OSError(f"no address for {host}")
        return str(infos[0][4][0])

    async def delete(self, call_id: str) -> CallStats:
        """Close the call's session; deleting an unknown call is not an error (a BYE and a
        media timeout may both end the same call)."""
        self._held.pop(call_id, None)
        self._bodies.pop(call_id, None)
        services = self._services.pop(call_id, None)
        if self._forget is not None:
            self._forget(call_id)
        final = self.relay.close_session(call_id)    # closes the services first
        if final is None:
            final = CallStats(call_id, LegStats(), LegStats())
        # A recording's file is finished on the disk thread: its outcome waits for that.
        outcome = None if services is None else await services.settled()
        return final if outcome is None else replace(final, recording=outcome)

    async def close(self) -> None:
        for task in list(self._looking):
            task.cancel()
        await asyncio.gather(*self._looking, return_exceptions=True)
        await self.relay.close()        # each session closes its services
        self._services.clear()
        self._bodies.clear()


def _leg(leg: str) -> Leg:
    """"a" or "b" as a Leg; ValueError otherwise."""
    return "a" if other_leg(leg) == "b" else "b"


def _host_names(endpoints: Sequence[MediaEndpoint]) -> set[str]:
    """The hosts of `endpoints` (c= and a=rtcp) that are names, not IP literals."""
    return {host for e in endpoints for host in (e.host, e.rtcp_host)
            if host is not None and not _is_ip(host)}


def _is_ip(host: str) -> bool:
    """An IPv4 or IPv6 literal (socket.inet_pton: a tenth of ipaddress's cost per offer)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


class _SipmaskSdp:
    """parse_endpoints / rewrite / is_hold on sipmask.sdp.scan, the one SDP path, with one
    o= line counter per leg (RFC 3264 §8: same sess-id for the session, version + 1 on
    each change)."""

    def __init__(self) -> None:
        self._origins: dict[str, OriginCounter] = {}
        # The last body and its scan. EmbeddedBackend reads each body three times in a row
        # (endpoints, hold, rewrite), so each is scanned once; nothing changes a scan.
        self._body: bytes | None = None
        self._scan: scan.Scan | None = None

    def read(self, sdp: bytes) -> scan.Scan:
        if self._scan is None or sdp != self._body:
            self._scan = None               # a body scan refuses leaves nothing behind
            self._scan = scan.scan(sdp)
            self._body = sdp
        return self._scan

    def parse_endpoints(self, sdp: bytes) -> list[MediaEndpoint | None]:
        """The endpoints, once the body has passed every check `rewrite` would make:
        ParseError (400) for a malformed body, SdpError (488) for one the relay cannot
        carry, so EmbeddedBackend refuses it before it opens anything."""
        scanned = self.read(sdp)
        scan.check_relayable(scanned)
        return scan.media_endpoints(scanned)

    def is_hold(self, sdp: bytes) -> bool:
        return scan.is_on_hold(self.read(sdp))

    def rewrite(self, sdp: bytes, address: str, ports: list[int], leg_key: str) -> bytes:
        counter = self.origin(leg_key, address)    # before the scan, which may refuse
        return scan.rewrite(self.read(sdp), address, ports, counter)

    def origin(self, leg_key: str, address: str) -> OriginCounter:
        """The o= counter of the leg `leg_key` names, made on first use."""
        counter = self._origins.get(leg_key)
        if counter is None or counter.address != address:
            counter = OriginCounter(address=address, sess_id=new_session_id())
            self._origins[leg_key] = counter
        return counter

    def forget(self, call_id: str) -> None:
        for leg in ("a", "b"):
            self._origins.pop(f"{call_id}:{leg}", None)


def sipmask_sdp() -> _SipmaskSdp:
    """The SDP functions of sipmask.sdp, for EmbeddedBackend's defaults."""
    return _SipmaskSdp()
