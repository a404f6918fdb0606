"""A call's recording: both directions mixed into one stereo stream, in time (sans-IO).

`CallRecorder` takes each leg's audio as it arrives, `feed(party, now, timestamp, ssrc,
pcm)` (or `feed_rtp` with the packet and the leg's codecs), and writes 16-bit stereo at
8 kHz, the caller left and the callee right, through a `RecordingSink` (media/sinks.py),
which read back is a stereo WAV (store/recording_file.py).
It reads no clock: `now` is passed in, and the shell calls `tick(now)` at `next_due()` so
that the file grows while both legs are silent too.

Placing audio in time. The two legs' RTP timestamps have unrelated origins, so the
recording's time line is the arrival clock: sample k is `start + k/8000`. Within a stream,
a packet goes where its RTP timestamp puts it relative to the stream's anchor (jitter does
not move audio), and the anchor is the earliest-arriving packet seen: whenever a packet
arrives sooner than the anchor predicts, it becomes the anchor (the first packets of a call
are often delayed). A new SSRC starts a new anchor. Samples are held `delay_s` (200 ms)
before they are written, the window in which late packets still land in place; a packet
later than that re-anchors the stream where it arrived (a sender whose clock runs slow
falls behind ours and is put back this way: 200 ms of silence every half hour or so at
100 ppm). Time with no audio from a leg is silence on its channel.

Bounded memory: per leg at most `delay_s` plus one `chunk_s` (1 s) of samples is held, and
a long silence is written one chunk at a time; packets of more than one second of audio
are dropped.

Failures never reach the call: an OSError from the sink (disk full, I/O error, a file
past 4 GiB) marks the recorder failed with the errno's name, closes the sink, drops what
it holds, and every later call does nothing. The file keeps what was written, and reads
back as a WAV of it.
"""

from __future__ import annotations

import contextlib
import errno
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from sipmask.media import rtp
from sipmask.media.sinks import RecordingSink
from sipmask.media.wav import G711, RATE, SAMPLE_BYTES, StereoWriter

FRAME_SAMPLES = 160                 # output is written in whole 20 ms frames
MAX_PACKET_SAMPLES = RATE           # a packet of more than 1 s of audio is not a phone's


class Party(Enum):
    """The recording's channels: the caller left, the callee right."""

    CALLER = 0
    CALLEE = 1


@dataclass
class RecorderStats:
    data_bytes: int = 0             # of stereo samples in the file
    dropped_packets: int = 0        # unreadable, not audio of the leg's codecs, or oversized
    late_samples: int = 0           # arrived after their place was written
    resyncs: int = 0                # a stream re-anchored (new SSRC, too late, clock drift)
    failed: bool = False
    error: str | None = None        # the errno name (ENOSPC, EIO, EFBIG, ...) when failed


@dataclass
class _Stream:
    ssrc: int | None = None
    last_timestamp: int = 0
    extended: int = 0               # the RTP timestamp unwrapped past 32 bits
    offset: int = 0                 # time line position = extended + offset


class CallRecorder:
    """One call's stereo recording (see the module docstring)."""

    def __init__(self, sink: RecordingSink, start: float, *, delay_s: float = 0.2,
                 chunk_s: float = 1.0) -> None:
        self._writer = StereoWriter(sink)
        self._start = start
        self._delay = round(delay_s * RATE)
        self._chunk = max(FRAME_SAMPLES, round(chunk_s * RATE) // FRAME_SAMPLES * FRAME_SAMPLES)
        self._written = 0            # samples per channel written; the buffers start here
        self._buffers = (bytearray(), bytearray())
        self._streams = (_Stream(), _Stream())
        self._closed = False
        self._active = True          # neither closed nor failed (read on every packet)
        self.stats = RecorderStats()

    @property
    def active(self) -> bool:
        return self._active

    def _position(self, now: float) -> int:
        return round((now - self._start) * RATE)

    def feed_rtp(self, party: Party, now: float, packet: bytes,
                 codecs: Mapping[int, G711]) -> None:
        """Record an RTP packet of `party`'s leg when its payload type is one of the leg's
        audio codecs; telephone-events, comfort noise and the rest are left out."""
        if not self._active:
            return
        parsed = rtp.parse(packet)
        codec = codecs.get(parsed.payload_type) if parsed is not None else None
        if parsed is None or codec is None:
            self.stats.dropped_packets += 1
            return
        self.feed(party, now, parsed.timestamp, parsed.ssrc, codec.decode(parsed.payload))

    def feed(self, party: Party, now: float, timestamp: int, ssrc: int, pcm: bytes) -> None:
        """Record `pcm` (16-bit, 8 kHz, the packet's audio) that arrived at `now`."""
        if not self._active:
            return
        count = len(pcm) // SAMPLE_BYTES
        if count == 0 or count > MAX_PACKET_SAMPLES or len(pcm) % SAMPLE_BYTES:
            self.stats.dropped_packets += 1
            return
        now_at = self._position(now)
        if now_at - self._delay - self._written >= self._chunk:    # tick's test, inline
            self.tick(now)
            if not self._active:
                return
        # Where the packet's first sample goes if it was sent the moment it arrived.
        arrived = now_at - count
        side = party.value
        stream = self._streams[side]
        if stream.ssrc != ssrc:
            if stream.ssrc is not None:
                self.stats.resyncs += 1
            stream.ssrc, stream.last_timestamp, stream.extended = ssrc, timestamp, 0
            stream.offset = arrived
        else:
            stream.extended += rtp.timestamp_delta(timestamp, stream.last_timestamp)
            stream.last_timestamp = timestamp
        position = stream.extended + stream.offset
        if position > arrived:
            # Sooner than the anchor predicts: the anchor packet was delayed; this one
            # is the better anchor.
            stream.offset = arrived - stream.extended
            position = arrived
        elif position < arrived - self._delay:
            # Later than the window allows: the stream moved (a slow clock, a long stall).
            stream.offset = arrived - stream.extended
            position = arrived
            self.stats.resyncs += 1
        self._place(side, position, pcm)

    def _place(self, side: int, position: int, pcm: bytes) -> None:
        late = self._written - position
        if late > 0:
            self.stats.late_samples += late
            pcm = pcm[late * SAMPLE_BYTES:]
            position = self._written
        if not pcm:
            return
        buffer = self._buffers[side]
        begin = (position - self._written) * SAMPLE_BYTES
        end = begin + len(pcm)
        if len(buffer) < end:
            buffer.extend(bytes(end - len(buffer)))
        buffer[begin:end] = pcm

    def next_due(self) -> float | None:
        """When `tick` has a chunk to write, or None once closed or failed."""
        if not self.active:
            return None
        return self._start + (self._written + self._chunk + self._delay) / RATE

    def tick(self, now: float) -> None:
        """Write every whole chunk older than the delay window."""
        if not self.active:
            return
        horizon = self._position(now) - self._delay
        ready = (horizon - self._written) // self._chunk * self._chunk
        if ready > 0:
            self._flush(self._written + ready)

    def close(self, now: float) -> RecorderStats:
        """Write everything up to `now` (the call's end) and close the file; idempotent."""
        if self.active:
            held = max(len(b) for b in self._buffers) // SAMPLE_BYTES
            end = max(self._position(now), self._written + held)
            end = -(-end // FRAME_SAMPLES) * FRAME_SAMPLES
            self._flush(end)
        if not self._closed:
            self._closed = True
            self._active = False
            if not self.stats.failed:
                try:
                    self._writer.close()
                except OSError as exc:
                    self._fail(exc, close=False)
        return self.stats

    def _flush(self, upto: int) -> None:
        """Write both channels up to sample `upto`, a chunk at a time, silence where
        nothing arrived."""
        while self._written < upto:
            count = min(upto - self._written, self._chunk)
            size = count * SAMPLE_BYTES
            channels = []
            for buffer in self._buffers:
                taken = bytes(buffer[:size])
                del buffer[:size]
                channels.append(taken + bytes(size - len(taken)))
            # Interleave as raw 16-bit units: byte order passes through untouched.
            frames = array("H", bytes(2 * size))
            frames[0::2] = array("H", channels[0])
            frames[1::2] = array("H", channels[1])
            try:
                self._writer.append(frames.tobytes())
            except OSError as exc:
                self._fail(exc)
                return
            self._written += count
            self.stats.data_bytes = self._writer.data_bytes

    def _fail(self, exc: OSError, *, close: bool = True) -> None:
        self.stats.failed = True
        self._active = False
        self.stats.error = errno.errorcode.get(exc.errno or 0, "OSError")
        for buffer in self._buffers:
            buffer.clear()
        if close:
            # The sink releases the file even when its close raises (RecordingSink.close).
            with contextlib.suppress(OSError):
                self._writer.close()
