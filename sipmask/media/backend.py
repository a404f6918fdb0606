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

from sipmask.sdp.errors import SdpError

Leg = Literal["a", "b"]
LEGS: tuple[Leg, Leg] = ("a", "b")

# The most m= lines an SDP may carry. RFC 3264 sets no limit, but each active line costs
# the relay two port pairs (rtpengine as many), and one offer with 600 lines could take the
# whole port range. A voice call needs one line, two with video; 8 leaves room for T.38 and
# for the disabled lines a re-offer must keep (RFC 3264 §8: m= lines are never removed).
MAX_MEDIA_LINES = 8


def check_media_lines(count: int) -> None:
    """Refuse (488, RFC 3261 §21.4.26) an SDP with more than MAX_MEDIA_LINES m= lines."""
    if count > MAX_MEDIA_LINES:
        raise SdpError(f"Not Acceptable Here: {count} m= lines, at most {MAX_MEDIA_LINES}")


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
    dropped: int = 0        # received, not sent: no peer on the other side yet
    rejected: int = 0       # from a signalled IP while another port holds the latch
                            # (relay only; media.latching signalled_ip or any)
    last_rtp_at: float | None = None   # monotonic time of the last RTP packet received
    strangers: int = 0      # from an address the leg's SDP and SIP never named: dropped
                            # (relay only; media.latching strict or signalled_ip)
    rtcp_dropped: int = 0   # RTCP not relayed: unparseable (media/rtcp.py), or SRTCP


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
