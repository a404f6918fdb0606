"""Announcements played as RTP: which file, and the packets on their schedule (sans-IO).

`PromptPlayer` is one RTP stream that sipmask sends to a leg (RFC 3550): its own SSRC, a
sequence number that goes up by one per packet, a timestamp on the 8 kHz G.711 clock, and
one 20 ms packet of 160 samples every 20 ms (RFC 3551 §4.5: G.711's default packet time).
It never reads a clock or touches a socket: the shell asks `next_due()`, arms one timer,
and at that time calls `packets_due(now)` and sends what it returns.

Late ticks. A shell that wakes up late gets every packet that fell due, up to `max_burst`
(3 by default: 60 ms, which any jitter buffer absorbs) in one call. When more are overdue
(the event loop stalled) the player does not burst them or drop audio: it slips its
schedule, the prompt goes on where it stopped, and the RTP timestamp jumps over the time
that passed with the marker bit set on the next packet, which RFC 3551 §4.1 prescribes for
the first packet after a silence, so the receiver resets its playout point instead of
counting lost packets.

Marker bit: on the first packet of the stream and on the first after any silence (a slip,
a prompt started after the last one ended, RFC 3550 §5.1 / RFC 3551 §4.1). Looping plays
the prompt again without a gap and without a marker.

The player stops at once: after `stop()` `packets_due` returns nothing; `play()` starts
another prompt on the same stream (same SSRC, sequence numbers going on, the timestamp
moved by the time that passed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sipmask.media import rtp
from sipmask.media.wav import G711, RATE, SAMPLE_BYTES, Audio, read_wav

FRAME_SAMPLES = 160                     # 20 ms at 8 kHz
FRAME_S = FRAME_SAMPLES / RATE
DEFAULT_MAX_BURST = 3
ANNOUNCEMENTS = ("unbound", "callee_notice", "ext_prompt", "recording_notice", "not_allowed")


@functools.lru_cache(maxsize=32)
def prompt_frames(audio: Audio, codec: G711) -> tuple[bytes, ...]:
    """The prompt as 20 ms payloads in `codec`, the last padded with silence. Cached: a
    prompt is encoded once per codec, not once per call."""
    pcm = audio.pcm
    pad = -len(pcm) % (FRAME_SAMPLES * SAMPLE_BYTES)
    encoded = codec.encode(pcm + bytes(pad))
    return tuple(encoded[i:i + FRAME_SAMPLES] for i in range(0, len(encoded), FRAME_SAMPLES))


@dataclass
class PlayerStats:
    packets_sent: int = 0
    slots_skipped: int = 0     # 20 ms slots a late tick slipped over (no packet, no audio lost)


class PromptPlayer:
    """One outgoing RTP stream of prompts for one leg (see the module docstring)."""

    def __init__(self, *, payload_type: int, codec: G711, audio: Audio, ssrc: int,
                 seq0: int, ts0: int, now: float, loop: bool = False,
                 max_burst: int = DEFAULT_MAX_BURST) -> None:
        if max_burst < 1:
            raise ValueError("max_burst must be at least 1")
        if not 0 <= payload_type <= 127:
            raise ValueError(f"payload type {payload_type} is not 0-127")
        self.payload_type = payload_type
        self.codec = codec
        self.ssrc = ssrc & 0xFFFFFFFF
        self.max_burst = max_burst
        self.stats = PlayerStats()
        self._seq = seq0 & 0xFFFF
        self._ts = ts0 & 0xFFFFFFFF      # the timestamp of the slot at `_origin + _slot·20ms`
        self._origin = now
        self._slot = 0
        self._marker = True
        self._frames: tuple[bytes, ...] = ()
        self._index = 0
        self._loop = False
        self._playing = False
        self._start(audio, loop)

    @property
    def playing(self) -> bool:
        return self._playing

    def _slot_time(self) -> float:
        # Computed from an integer slot count, so 20 ms steps never accumulate float error.
        return self._origin + self._slot * FRAME_S

    def _start(self, audio: Audio, loop: bool) -> None:
        self._frames = prompt_frames(audio, self.codec)
        self._index = 0
        self._loop = loop
        self._playing = True

    def play(self, audio: Audio, now: float, *, loop: bool = False) -> None:
        """Play `audio` next on this stream, in place of what is playing. When the stream's
        next slot has not come yet (a prompt is playing on time, or the last one has just
        ended) the new prompt takes that slot: no gap. Otherwise it starts at `now` after a
        silence: the timestamp moves by the time that passed, with the marker bit."""
        slot_time = self._slot_time()
        if slot_time < now:
            self._ts = (self._ts + round((now - slot_time) * RATE)) & 0xFFFFFFFF
            self._origin, self._slot = now, 0
            self._marker = True
        self._start(audio, loop)

    def stop(self) -> None:
        """Stop now: no packet after this (the legs are bridged, or the caller is done)."""
        self._playing = False

    def next_due(self) -> float | None:
        """When the next packet is due, or None when nothing is playing."""
        return self._slot_time() if self._playing else None

    def packets_due(self, now: float) -> list[bytes]:
        """The packets due by `now`, at most `max_burst` (module docstring: late ticks)."""
        if not self._playing:
            return []
        # A tiny epsilon: `now` equal to a due time computed the same way counts as due.
        overdue = math.floor((now - self._slot_time()) / FRAME_S + 1e-9) + 1
        if overdue <= 0:
            return []
        if overdue > self.max_burst:
            skipped = overdue - self.max_burst
            self._slot += skipped
            self._ts = (self._ts + skipped * FRAME_SAMPLES) & 0xFFFFFFFF
            self._marker = True
            self.stats.slots_skipped += skipped
            overdue = self.max_burst
        packets: list[bytes] = []
        for _ in range(overdue):
            packets.append(self._next_packet())
            if not self._playing:
                break
        return packets

    def _next_packet(self) -> bytes:
        packet = rtp.build(self.payload_type, self._seq, self._ts, self.ssrc,
                           self._frames[self._index], marker=self._marker)
        self._seq = (self._seq + 1) & 0xFFFF
        self._ts = (self._ts + FRAME_SAMPLES) & 0xFFFFFFFF
        self._slot += 1
        self._marker = False
        self._index += 1
        self.stats.packets_sent += 1
        if self._index == len(self._frames):
            self._index = 0
            self._playing = self._loop
        return packet

    @property
    def next_sequence(self) -> int:
        return self._seq


def announcement(key: str, value: str | None, base: str | Path = ".") -> Audio | None:
    """The audio for `announcements.<key>`: None for null (no prompt), the packaged prompt
    for "default", else the operator's WAV file (a relative path against `base`). Raises
    WavError naming the file when it cannot be played."""
    if key not in ANNOUNCEMENTS:
        raise ValueError(f"unknown announcement {key!r}")
    if value is None:
        return None
    if value == "default":
        packaged = resources.files("sipmask.prompts").joinpath(f"{key}.wav")
        with resources.as_file(packaged) as path:
            return read_wav(path)
    path = Path(value)
    return read_wav(path if path.is_absolute() else Path(base) / path)


def choose_codec(formats: Sequence[str], rtpmaps: Sequence[str]) -> tuple[G711, int] | None:
    """The codec and payload type a prompt is sent with on a leg: the first of PCMU/PCMA
    in the leg's m= format list (the offerer's preference, RFC 3264 §5.1), or None when it
    has neither (no prompt then: sipmask does not transcode). `formats` are the m= line's
    payload types, `rtpmaps` the values of its a=rtpmap attributes ("0 PCMU/8000")."""
    named = _rtpmap_names(rtpmaps)
    for fmt in formats:
        if not fmt.isdigit():
            continue
        pt = int(fmt)
        name = named.get(pt)
        if name is None:
            # RFC 3551 Table 4: the static types need no rtpmap.
            name = {0: "PCMU/8000", 8: "PCMA/8000"}.get(pt) if pt < 96 else None
        for codec in G711:
            if name is not None and name.upper().split("/")[:2] == [codec.value, "8000"]:
                return codec, pt
    return None


def telephone_event_type(formats: Sequence[str], rtpmaps: Sequence[str]) -> int | None:
    """The payload type of telephone-event/8000 (RFC 4733 §7.1.1) in the m= line, if any."""
    named = _rtpmap_names(rtpmaps)
    for fmt in formats:
        if fmt.isdigit():
            name = named.get(int(fmt), "")
            if name.lower().split("/")[:2] == ["telephone-event", "8000"]:
                return int(fmt)
    return None


def _rtpmap_names(rtpmaps: Sequence[str]) -> dict[int, str]:
    """{payload type: "encoding/rate[/channels]"} from a=rtpmap values (RFC 4566 §6)."""
    named: dict[int, str] = {}
    for value in rtpmaps:
        pt, _, name = value.strip().partition(" ")
        if pt.isdigit() and name.strip():
            named.setdefault(int(pt), name.strip())
    return named
