"""The media seam: one interface the call engine drives, two implementations behind it.

`MediaBackend` is shaped like rtpengine's ng protocol (offer / answer / delete with the
SDP in and the rewritten SDP out), so the engine has one code path whether media runs
through the embedded relay (`media.embedded.EmbeddedBackend`) or through rtpengine
(`media.rtpengine.RtpengineBackend`).

Legs are named "a" (the caller's side, leg A of the B2BUA) and "b" (the callee's). The
leg passed to `offer` / `answer` is the one whose SDP it is: A's INVITE body is
`offer(call_id, "a", body)`, and what comes back is the body for leg B.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Leg = Literal["a", "b"]
LEGS: tuple[Leg, Leg] = ("a", "b")


def other_leg(leg: str) -> Leg:
    if leg == "a":
        return "b"
    if leg == "b":
        return "a"
    raise ValueError(f"leg must be 'a' or 'b', not {leg!r}")


@dataclass(frozen=True, slots=True)
class LegStats:
    """Counters for one party's side, RTP and RTCP together. `in` is what the party sent
    to sipmask, `out` what sipmask sent to the party."""

    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    dropped: int = 0        # received, not sent: no peer on the other side yet, or RTCP
                            # that could not be scrubbed (media/rtcp.py)
    rejected: int = 0       # from a source other than the latched one (relay only)
    last_rtp_at: float | None = None   # monotonic time of the last RTP packet received


@dataclass(frozen=True, slots=True)
class CallStats:
    call_id: str
    a: LegStats
    b: LegStats
    timed_out: bool = False

    @property
    def packets_relayed(self) -> int:
        return self.a.packets_out + self.b.packets_out


class MediaBackend(Protocol):
    async def offer(self, call_id: str, leg: str, sdp: bytes, *,
                    sip_source: str | None = None) -> bytes:
        """`leg` offers `sdp`; returns the SDP to send to the other leg (media via sipmask).
        `sip_source` is the IP the leg's signalling came from (media.latching signalled_ip)."""
        ...

    async def answer(self, call_id: str, leg: str, sdp: bytes, *,
                     sip_source: str | None = None) -> bytes:
        """`leg` answers with `sdp`; returns the SDP to send to the offering leg."""
        ...

    async def delete(self, call_id: str) -> CallStats:
        """End the call's media, free its ports; returns the final counters."""
        ...

    async def close(self) -> None:
        """Stop the backend (all sessions, sockets, tasks)."""
        ...
