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
from sipmask.media.backend import CallStats, LegStats, check_media_lines, other_leg
from sipmask.media.relay import Relay
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
        if parse_endpoints is None or rewrite is None:
            default = sipmask_sdp()
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
        before = self.relay.session(call_id)
        enabled = await self._resolved([e for e in found if e is not None])
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
            holding = self._held.setdefault(call_id, set())
            if held:
                holding.add(leg)
            else:
                holding.discard(leg)
            session.set_hold(bool(holding))
        return body

    async def _resolved(self, endpoints: list[MediaEndpoint]) -> list[MediaEndpoint]:
        """`endpoints` with every host name replaced by its address: each name looked up
        once, all of them within resolve_timeout_s. SdpError (488) when one fails or is
        late; its reason names no host (a name may hold a number)."""
        names = {host for e in endpoints for host in (e.host, e.rtcp_host)
                 if host is not None and not _is_ip(host)}
        if not names:
            return endpoints
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
        if self._forget is not None:
            self._forget(call_id)
        final = self.relay.close_session(call_id)
        return final if final is not None else CallStats(call_id, LegStats(), LegStats())

    async def close(self) -> None:
        for task in list(self._looking):
            task.cancel()
        await asyncio.gather(*self._looking, return_exceptions=True)
        await self.relay.close()


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

    def _read(self, sdp: bytes) -> scan.Scan:
        if self._scan is None or sdp != self._body:
            self._scan = None               # a body scan refuses leaves nothing behind
            self._scan = scan.scan(sdp)
            self._body = sdp
        return self._scan

    def parse_endpoints(self, sdp: bytes) -> list[MediaEndpoint | None]:
        """The endpoints, once the body has passed every check `rewrite` would make:
        ParseError (400) for a malformed body, SdpError (488) for one the relay cannot
        carry, so EmbeddedBackend refuses it before it opens anything."""
        scanned = self._read(sdp)
        scan.check_relayable(scanned)
        return scan.media_endpoints(scanned)

    def is_hold(self, sdp: bytes) -> bool:
        return scan.is_on_hold(self._read(sdp))

    def rewrite(self, sdp: bytes, address: str, ports: list[int], leg_key: str) -> bytes:
        counter = self._origins.get(leg_key)
        if counter is None or counter.address != address:
            counter = OriginCounter(address=address, sess_id=new_session_id())
            self._origins[leg_key] = counter
        return scan.rewrite(self._read(sdp), address, ports, counter)

    def forget(self, call_id: str) -> None:
        for leg in ("a", "b"):
            self._origins.pop(f"{call_id}:{leg}", None)


def sipmask_sdp() -> _SipmaskSdp:
    """The SDP functions of sipmask.sdp, for EmbeddedBackend's defaults."""
    return _SipmaskSdp()
