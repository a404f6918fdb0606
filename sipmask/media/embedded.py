"""MediaBackend over the embedded relay: a thin adapter from SDP bodies to relay sessions.

The SDP work is two injected callables, so this adapter is tested with simple lambdas:
    parse_endpoints(sdp) -> [(host, rtp_port) | None, ...]   one entry per m= line; None
                                                            for a stream at port 0
    rewrite(sdp, address, ports, leg_key) -> bytes          c=/o= to `address`, each m= line
                                                            not at port 0 to the next of
                                                            `ports`, in order
and optionally is_hold(sdp) -> bool (a=sendonly / a=inactive suspends the media timeout).
`leg_key` ("<call id>:<leg>") names the leg the body is for, stable for the call's life, so
`rewrite` can keep that leg's o= sess-id and bump its version (RFC 3264 §8).
Without them, `sipmask_sdp()` builds the three from sipmask.sdp (imported only then).

Each enabled m= line gets its own relay media line (its own port pairs on both sides).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sipmask.config.schema import MediaConfig
from sipmask.errors import MediaError
from sipmask.media.backend import CallStats, LegStats, other_leg
from sipmask.media.relay import Relay, RelaySession

ParseEndpoints = Callable[[bytes], Sequence[tuple[str, int] | None]]
Rewrite = Callable[[bytes, str, list[int], str], bytes]
IsHold = Callable[[bytes], bool]


class EmbeddedBackend:
    def __init__(self, config: MediaConfig, *, on_timeout: Callable[[str], None],
                 parse_endpoints: ParseEndpoints | None = None, rewrite: Rewrite | None = None,
                 is_hold: IsHold | None = None, relay: Relay | None = None) -> None:
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
        self._held: dict[str, set[str]] = {}   # call id -> legs whose last SDP was hold

    async def offer(self, call_id: str, leg: str, sdp: bytes, *,
                    sip_source: str | None = None) -> bytes:
        session = self.relay.session(call_id) or await self.relay.open_session(call_id)
        return await self._apply(session, leg, sdp)

    async def answer(self, call_id: str, leg: str, sdp: bytes, *,
                     sip_source: str | None = None) -> bytes:
        session = self.relay.session(call_id)
        if session is None:
            raise MediaError(f"answer for call {call_id} without an offer")
        return await self._apply(session, leg, sdp)

    async def _apply(self, session: RelaySession, leg: str, sdp: bytes) -> bytes:
        """Point `leg`'s side at its SDP addresses; the body for the other leg names the
        other side's relay ports, so each party sends to its own side of the relay."""
        towards = other_leg(leg)
        enabled = [e for e in self._parse_endpoints(sdp) if e is not None]
        while session.media_count < len(enabled):
            await self.relay.add_media(session)
        ports: list[int] = []
        for index, (host, port) in enumerate(enabled):
            session.set_remote(leg, host, port, index=index)
            ports.append(session.local(towards, index).rtp)
        if self._is_hold is not None:
            held = self._held.setdefault(session.call_id, set())
            if self._is_hold(sdp):
                held.add(leg)
            else:
                held.discard(leg)
            session.set_hold(bool(held))
        return self._rewrite(sdp, self.relay.address, ports, f"{session.call_id}:{towards}")

    async def delete(self, call_id: str) -> CallStats:
        """Close the call's session; deleting an unknown call is not an error (a BYE and a
        media timeout may both end the same call)."""
        self._held.pop(call_id, None)
        if self._forget is not None:
            self._forget(call_id)
        final = self.relay.close_session(call_id)
        return final if final is not None else CallStats(call_id, LegStats(), LegStats())

    async def close(self) -> None:
        await self.relay.close()


class _SipmaskSdp:
    """parse_endpoints / rewrite / is_hold built on sipmask.sdp, with one o= line counter
    per leg (RFC 3264 §8: same sess-id for the session, version + 1 on each change).

    Each body goes through sipmask.sdp.fast, which works on the lines as strings; where it
    declines (a body the full path refuses, or one it would refuse to rewrite), the full
    path (parse → model → rewrite_for_relay → stamp → to_bytes) runs and gives the answer
    or raises its error. `fast=False` runs only the full path (the differential tests)."""

    def __init__(self, *, fast: bool = True) -> None:
        from sipmask.sdp import fast as fast_path
        from sipmask.sdp import parser, rewrite
        self._parser: Any = parser
        self._sdp: Any = rewrite
        self._fast: Any = fast_path if fast else None
        self._origins: dict[str, Any] = {}
        # The last body, its scan (None: the fast path declined) and its model (None: not
        # parsed yet). EmbeddedBackend reads each body three times in a row (endpoints, hold,
        # rewrite), so each is scanned, and parsed if need be, once. Nothing changes a scan
        # or a parsed body in place (rewrite_for_relay builds a new one).
        self._body: bytes | None = None
        self._scan: Any = None
        self._model: Any = None

    def _read(self, sdp: bytes) -> Any:
        if sdp != self._body:
            self._scan = self._fast.scan(sdp) if self._fast is not None else None
            self._model = None
            self._body = sdp
        return self._scan

    def _parse(self, sdp: bytes) -> Any:
        self._read(sdp)
        if self._model is None:
            self._model = self._parser.parse(sdp)
        return self._model

    def parse_endpoints(self, sdp: bytes) -> list[tuple[str, int] | None]:
        scanned = self._read(sdp)
        if scanned is not None:
            found: list[tuple[str, int] | None] | None = self._fast.media_endpoints(scanned)
            if found is not None:
                return found
        endpoints: list[tuple[str, int] | None] = self._sdp.media_endpoints(self._parse(sdp))
        return endpoints

    def is_hold(self, sdp: bytes) -> bool:
        scanned = self._read(sdp)
        if scanned is not None:
            return bool(self._fast.is_on_hold(scanned))
        return bool(self._sdp.is_on_hold(self._parse(sdp)))

    def rewrite(self, sdp: bytes, address: str, ports: list[int], leg_key: str) -> bytes:
        counter = self._origins.get(leg_key)
        if counter is None or counter.address != address:
            counter = self._sdp.OriginCounter(address=address,
                                              sess_id=self._sdp.new_session_id())
            self._origins[leg_key] = counter
        scanned = self._read(sdp)
        if scanned is not None:
            body: bytes | None = self._fast.rewrite(scanned, address, ports, counter)
            if body is not None:
                return body
        described = self._sdp.rewrite_for_relay(self._parse(sdp), address=address,
                                                ports=ports, origin=counter.origin)
        return bytes(counter.stamp(described).to_bytes())

    def forget(self, call_id: str) -> None:
        for leg in ("a", "b"):
            self._origins.pop(f"{call_id}:{leg}", None)


def sipmask_sdp() -> _SipmaskSdp:
    """The SDP functions of sipmask.sdp, for EmbeddedBackend's defaults."""
    return _SipmaskSdp()
