"""The media seam: one interface the call engine drives, two implementations behind it.

`MediaBackend` is shaped like rtpengine's ng protocol (offer / answer / delete with the
SDP in and the rewritten SDP out), so the engine has one code path whether media runs
through the embedded relay (`media.embedded.EmbeddedBackend`) or through rtpengine
(`media.rtpengine.RtpengineBackend`).

Legs are named "a" (the caller's side, leg A of the B2BUA) and "b" (the callee's). The
leg passed to `offer` / `answer` is the one whose SDP it is: A's INVITE body is
`offer(call_id, "a", body)`, and what comes back is the body for leg B.

Media services (issue 15: announcements, digits, recording) are part of the same seam, so
the engine drives them alike on either backend. What the engine calls, and when:
- `open_early(call_id, "a", offer)` for a caller who must hear a prompt before any callee
  exists (unbound X, AXE extension prompt): the body for the 183 (sipmask's own answer,
  media/early_media.py), or None when the offer has no stream a prompt can use (then no
  early media). Later `offer(call_id, "a", ...)` / `answer(call_id, "b", ...)` join leg B
  to the same session: the caller's port stays, so no re-INVITE is needed.
- `play(call_id, leg, audio, loop=)` -> Playback: the prompt goes to the leg as RTP in its
  codec. While any prompt plays in a call, the parties do not hear each other. It ends by
  itself (not looped), by `stop_play`, by another `play` on the leg, when the call is
  first bridged (the answer that gives the call its second leg), or by `delete`;
  `Playback.ended` says which. A leg with no PCMU/PCMA, or that does not receive, ends at
  once with UNPLAYABLE.
- `collect_digits(call_id, leg, on_digit, inband=)` / `stop_digits`: each key the leg
  presses (RFC 4733 telephone-events; in-band tones too with inband=True) reaches
  `on_digit(call_id, leg, key)` once, from the event loop, never from inside a backend
  call. INFO bodies are the engine's to read (media/dtmf.parse_info).
- `start_recording(call_id, open_sink)` / `stop_recording(call_id)` -> RecordingOutcome:
  the call's stereo WAV (caller left, callee right) of what the parties hear of each
  other. A failure (the file cannot be made, the disk fills) never ends the call; the
  outcome says why, the backend counts it. `delete` stops a recording still running and
  its CallStats carry the outcome.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from sipmask.sdp.errors import SdpError

if TYPE_CHECKING:
    import asyncio

    from sipmask.media.wav import Audio

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


class PlayEnd(StrEnum):
    """Why a prompt stopped playing (Playback.ended)."""

    FINISHED = "finished"        # it played to its end
    STOPPED = "stopped"          # stop_play
    REPLACED = "replaced"        # another play on the same leg took its place
    BRIDGED = "bridged"          # the call got its second leg: the parties hear each other
    CLOSED = "closed"            # the call's media ended (delete, shutdown)
    UNPLAYABLE = "unplayable"    # no PCMU/PCMA on the leg, or it receives nothing
    FAILED = "failed"            # the backend refused it (rtpengine's error is logged)


@dataclass(eq=False)
class Playback:
    """One prompt on one leg. `ended` resolves with the reason it stopped; its callbacks
    run from the event loop (asyncio schedules them), never inside a backend call."""

    call_id: str
    leg: Leg
    ended: asyncio.Future[PlayEnd]

    @property
    def playing(self) -> bool:
        return not self.ended.done()


@dataclass(frozen=True, slots=True)
class RecordingOutcome:
    """How a call's recording went: `file` is its name in the recording directory (None
    when no file was made), `failed_reason` the errno name (ENOSPC, EIO, EACCES...) or a
    short reason when it failed, None when it did not. A failed recording keeps what was
    written before the failure, as a valid WAV."""

    file: str | None
    failed_reason: str | None = None
    data_bytes: int = 0

    @property
    def failed(self) -> bool:
        return self.failed_reason is not None


def failure_reason(exc: OSError) -> str:
    """The errno name of an OSError (never its text, which may hold a path)."""
    return errno.errorcode.get(exc.errno or 0, "OSError")


class RecordingFile(Protocol):
    """A RecordingSink (media/sinks.py) on a named file: store/recording_file.py's
    SealedWriter in sipmask serve, a FileSink or a stand-in in tests."""

    @property
    def path(self) -> Path: ...

    def write(self, data: bytes) -> None: ...
    def close(self) -> None: ...


# Opens the recording's file; raises OSError when it cannot. The embedded relay calls it on
# its disk thread (media/disk.py), rtpengine's conversion on a worker thread: never on the
# event loop.
SinkFactory = Callable[[], RecordingFile]
# on_digit(call_id, leg, key): key is one of "0123456789*#ABCD".
DigitCallback = Callable[[str, Leg, str], None]


@dataclass(frozen=True, slots=True)
class CallStats:
    call_id: str
    a: LegStats
    b: LegStats
    timed_out: bool = False
    recording: RecordingOutcome | None = None    # the call was recorded (stop or delete)

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
        """End the call's media, free its ports; returns the final counters. Prompts stop,
        digits are no longer collected, a running recording is closed (its outcome in the
        counters)."""
        ...

    async def open_early(self, call_id: str, leg: str, offer_sdp: bytes, *,
                         sip_source: str | None = None) -> bytes | None:
        """Open the call's media on `leg` alone, for early media (module docstring): the
        183's SDP, or None (nothing opened) when no stream of the offer can carry a
        prompt. Raises as `offer` does for a body it refuses."""
        ...

    async def play(self, call_id: str, leg: str, audio: Audio, *,
                   loop: bool = False) -> Playback:
        """Play `audio` to `leg` (module docstring). Raises MediaError for an unknown call."""
        ...

    async def stop_play(self, call_id: str, leg: str) -> None:
        """Stop the prompt playing to `leg` now; nothing if none plays."""
        ...

    async def collect_digits(self, call_id: str, leg: str, on_digit: DigitCallback, *,
                             inband: bool = False) -> None:
        """Report `leg`'s key presses to `on_digit` until stop_digits or delete."""
        ...

    async def stop_digits(self, call_id: str, leg: str) -> None:
        ...

    async def start_recording(self, call_id: str, open_sink: SinkFactory) -> None:
        """Record the call from now on. Never raises for the file: a failure is in the
        outcome. Raises MediaError for an unknown call or one already recorded."""
        ...

    async def stop_recording(self, call_id: str) -> RecordingOutcome | None:
        """Close the recording; its outcome, or None when the call was not recorded."""
        ...

    async def close(self) -> None:
        """Stop the backend (all sessions, sockets, tasks)."""
        ...
