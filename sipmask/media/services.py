"""Media services on the embedded relay: prompts sent as RTP, keys heard, the call recorded.

The asyncio side of the sans-IO blocks (media/prompt.py, dtmf.py, recorder.py) for one call,
`CallServices`, attached to the call's RelaySession (media/relay.py) by EmbeddedBackend the
first time the engine asks for a service (backend.py says what the engine calls and when).
A call that never asks costs nothing: no object, no tap, no timer.

Prompts. One `PromptPlayer` per leg for the call's life (one SSRC, sequence numbers going
on from prompt to prompt, RFC 3550 §5.1), one loop timer per playing leg armed at the
player's `next_due()`; each tick sends what `packets_due(now)` returns from the leg's relay
RTP port to the leg's address (the SDP's, or the latched one). Stopping cancels the timer,
so not one packet follows. While any prompt plays the session is muted (no RTP forwarded
between the parties, RelaySession.set_muted); the call is unmuted when the last one ends.
The first time the call has both legs (`bridge`, from the answer that brings the second
leg) every prompt stops: from then on the parties hear each other, and a prompt played after
that (a recording notice) mutes them again until it ends.

Keys. A tap on the leg's audio line (RelaySession.tap) feeds its telephone-event packets
(the payload types named telephone-event/8000 in either leg's SDP, RFC 4733 §7.1.1) to a
TelephoneEventDecoder and, with `inband`, its G.711 audio to an InbandDtmfDetector until the
first telephone-event arrives (a phone that sends both would be heard twice). Each key
goes to the callback through `loop.call_soon`, after the packet path has returned.

Recording. A tap on both legs' audio lines gives each packet forwarded to the other party,
with its arrival time, to CallRecorder.feed_rtp (caller = leg a, left; callee = leg b,
right); a timer at the recorder's `next_due()` writes through silences. What the parties
do not hear of each other (a prompt, muted audio) is not recorded. The recorder writes into
a QueuedSink: the file is made, written and closed on the relay's disk thread
(media/disk.py), never on the loop. A recording that fails (the file cannot be made, a
write fails on the thread, or the recorder's sink raised) is counted once, untapped and
left for `stop_recording` to report; `settled()` gives the outcome once the thread has
closed the file (at most SETTLE_S later), so a failure of the last write or of the close
is in it too.

Which line and codec a leg uses comes from its SDP (`leg_media`, pure): the first plain-RTP
audio stream with PCMU or PCMA (media/early_media.plan, the rule of the 183's answer). A
prompt is sent in the first of the leg's G.711 types that the other leg's SDP also names
(the negotiated codec), else the leg's first; a leg with neither plays nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from sipmask.entropy import token_bytes
from sipmask.errors import MediaError
from sipmask.media import rtp
from sipmask.media.backend import (
    LEGS,
    DigitCallback,
    Leg,
    Playback,
    PlayEnd,
    RecordingOutcome,
    SinkFactory,
)
from sipmask.media.disk import DiskWriter, QueuedSink
from sipmask.media.dtmf import InbandDtmfDetector, TelephoneEventDecoder
from sipmask.media.early_media import OfferedStream, offered_streams, plan
from sipmask.media.prompt import PromptPlayer, choose_codec, telephone_event_type
from sipmask.media.recorder import CallRecorder, Party, RecorderStats
from sipmask.media.relay import RelaySession, ServiceCounters
from sipmask.media.wav import G711, Audio
from sipmask.sdp.scan import Scan

_PARTY = {"a": Party.CALLER, "b": Party.CALLEE}
# How long a stopped recording's outcome waits for the disk thread to close its file; past
# it the recording counts as failed (ETIMEDOUT) and the CDR goes out without it.
SETTLE_S = 5.0


@dataclass(frozen=True, slots=True)
class LegMedia:
    """What a leg's SDP says the services need (module docstring)."""

    line: int                            # the relay media line of its audio stream
    prompt: tuple[G711, int] | None      # codec and payload type prompts go in; None: none
    codecs: Mapping[int, G711]           # audio payload types its RTP may carry
    events: frozenset[int]               # telephone-event payload types


def g711_types(stream: OfferedStream) -> dict[int, G711]:
    """{payload type: codec} for the stream's PCMU/PCMA formats, in m= order."""
    found: dict[int, G711] = {}
    for fmt in stream.formats:
        chosen = choose_codec([fmt], stream.rtpmaps)
        if chosen is not None:
            found[chosen[1]] = chosen[0]
    return found


def leg_media(own: Scan, other: Scan | None = None) -> LegMedia | None:
    """The leg's audio line and codecs from its own SDP `own` and, once known, the other
    leg's SDP `other` (offer and answer have the same m= lines in the same order, RFC 3264
    §6); None when no stream is plain-RTP audio with PCMU or PCMA."""
    streams = offered_streams(own)
    chosen = plan(streams)
    if chosen is None:
        return None
    stream = streams[chosen.index]
    codecs = g711_types(stream)
    events = {chosen.event_payload_type}
    prompt: tuple[G711, int] | None = (chosen.codec, chosen.payload_type)
    theirs = _same_stream(other, chosen.index)
    if theirs is not None:
        # The sender uses the receiver's numbers (RFC 3264 §5.1); an answer SHOULD keep the
        # offer's (§6.1), so both leg's numbers are accepted on the way in.
        their_codecs = g711_types(theirs)
        agreed = [(codec, pt) for pt, codec in codecs.items()
                  if codec in their_codecs.values()]
        if agreed:
            prompt = agreed[0]
        codecs = {**their_codecs, **codecs}
        events.add(telephone_event_type(theirs.formats, theirs.rtpmaps))
    line = sum(1 for part in own.media[:chosen.index] if part.port != 0)
    return LegMedia(line, prompt if chosen.plays else None, codecs,
                    frozenset(pt for pt in events if pt is not None))


def _same_stream(other: Scan | None, index: int) -> OfferedStream | None:
    if other is None:
        return None
    streams = offered_streams(other)
    if index >= len(streams) or streams[index].port == 0 or streams[index].media != "audio":
        return None
    return streams[index]


@dataclass(eq=False)
class _Playing:
    playback: Playback
    line: int
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Keys:
    on_digit: DigitCallback
    events: TelephoneEventDecoder = field(default_factory=TelephoneEventDecoder)
    inband: InbandDtmfDetector | None = None


@dataclass(eq=False)
class _Recording:
    recorder: CallRecorder
    sink: QueuedSink
    timer: asyncio.TimerHandle | None = None
    failed: bool = False                 # counted, untapped (the file or the recorder)
    stats: RecorderStats | None = None   # once stopped


class CallServices:
    """One call's prompts, key collection and recording on its RelaySession."""

    def __init__(self, session: RelaySession, *, clock: Callable[[], float],
                 describe: Callable[[Leg], LegMedia | None],
                 counters: ServiceCounters, disk: DiskWriter) -> None:
        self.session = session
        self.call_id = session.call_id
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._describe = describe
        self._counters = counters
        self._disk = disk
        self._media: dict[Leg, LegMedia | None] = {leg: describe(leg) for leg in LEGS}
        self._players: dict[Leg, PromptPlayer] = {}     # kept for the call: one SSRC per leg
        self._playing: dict[Leg, _Playing] = {}
        self._keys: dict[Leg, _Keys] = {}
        self._recording: _Recording | None = None
        self._stopped: _Recording | None = None         # stopped, its file not yet settled
        self._outcome: RecordingOutcome | None = None   # of the last recording settled
        self._tapped: dict[Leg, int] = {}               # leg -> line its tap is on
        self.bridged = False
        self.closed = False

    # -- the SDP changed (offer, answer, re-INVITE) ----------------------------------
    def refresh(self) -> None:
        """Read both legs' SDP again; taps follow the audio line."""
        self._media = {leg: self._describe(leg) for leg in LEGS}
        for leg in LEGS:
            self._retap(leg)

    def bridge(self) -> None:
        """The call has both legs for the first time: prompts stop, the parties hear each
        other (module docstring)."""
        if self.bridged:
            return
        self.bridged = True
        for leg in list(self._playing):
            self._end(leg, PlayEnd.BRIDGED)

    # -- prompts ----------------------------------------------------------------------
    def play(self, leg: Leg, audio: Audio, *, loop: bool = False) -> Playback:
        self._check_open()
        playback = Playback(self.call_id, leg, self._loop.create_future())
        media = self._media[leg]
        if media is None or media.prompt is None \
                or self.session.peer(leg, media.line) is None:
            self._counters.prompts_unplayable += 1
            playback.ended.set_result(PlayEnd.UNPLAYABLE)
            return playback
        if leg in self._playing:
            self._end(leg, PlayEnd.REPLACED)
        codec, payload_type = media.prompt
        now = self._clock()
        player = self._players.get(leg)
        if player is None or (player.codec, player.payload_type) != (codec, payload_type):
            # RFC 3550 §5.1: random SSRC, first sequence number and timestamp.
            seed = token_bytes(10)
            player = PromptPlayer(payload_type=payload_type, codec=codec, audio=audio,
                                  ssrc=int.from_bytes(seed[:4]),
                                  seq0=int.from_bytes(seed[4:6]),
                                  ts0=int.from_bytes(seed[6:]), now=now, loop=loop)
            self._players[leg] = player
        else:
            player.play(audio, now, loop=loop)
        self._playing[leg] = _Playing(playback, media.line)
        self.session.set_muted(True)
        self._arm_player(leg)
        return playback

    def stop_play(self, leg: Leg) -> None:
        if leg in self._playing:
            self._end(leg, PlayEnd.STOPPED)

    def _arm_player(self, leg: Leg) -> None:
        playing = self._playing[leg]
        due = self._players[leg].next_due()
        if due is None:
            self._end(leg, PlayEnd.FINISHED)
            return
        playing.timer = self._call_at(due, self._send_due, leg)

    def _send_due(self, leg: Leg) -> None:
        playing = self._playing.get(leg)
        if playing is None:
            return                  # stopped after the timer fired, before it ran
        playing.timer = None
        session, line = self.session, playing.line
        for packet in self._players[leg].packets_due(self._clock()):
            if session.send(leg, line, packet):
                self._counters.prompt_packets += 1
        self._arm_player(leg)

    def _end(self, leg: Leg, reason: PlayEnd) -> None:
        playing = self._playing.pop(leg)
        if playing.timer is not None:
            playing.timer.cancel()
        self._players[leg].stop()
        if not playing.playback.ended.done():
            playing.playback.ended.set_result(reason)
        if not self._playing:
            self.session.set_muted(False)

    # -- keys -------------------------------------------------------------------------
    def collect_digits(self, leg: Leg, on_digit: DigitCallback, *, inband: bool = False) -> None:
        self._check_open()
        self._keys[leg] = _Keys(on_digit, inband=InbandDtmfDetector() if inband else None)
        self._retap(leg)

    def stop_digits(self, leg: Leg) -> None:
        if self._keys.pop(leg, None) is not None:
            self._retap(leg)

    def _hear_keys(self, leg: Leg, keys: _Keys, media: LegMedia, data: bytes) -> None:
        payload_type = data[1] & 0x7F
        digits: Sequence[str] = ()
        if payload_type in media.events:
            packet = rtp.parse(data)
            if packet is not None:
                keys.inband = None          # it sends RFC 4733: tones would count twice
                digits = keys.events.feed(packet)
        elif keys.inband is not None:
            codec = media.codecs.get(payload_type)
            packet = rtp.parse(data) if codec is not None else None
            if codec is not None and packet is not None:
                digits = keys.inband.feed(codec.decode(packet.payload))
        for digit in digits:
            self._counters.digits += 1
            # No re-entry (DESIGN.md rule 15): the callback runs after the packet path.
            self._loop.call_soon(keys.on_digit, self.call_id, leg, digit)

    # -- recording --------------------------------------------------------------------
    def start_recording(self, open_sink: SinkFactory) -> QueuedSink:
        """Record the call from now on, into the file `open_sink` makes on the disk thread;
        the sink's `opened` says when that has happened (or failed: then counted and
        untapped already)."""
        self._check_open()
        if self._recording is not None:
            raise MediaError(f"call {self.call_id} is already being recorded")
        self._counters.recordings_started += 1

        def failed() -> None:
            recording = self._recording
            if recording is not None and recording.sink is sink:
                self._recording_failed(recording)

        sink = self._disk.open(open_sink, on_failed=failed)
        self._recording = _Recording(CallRecorder(sink, self._clock()), sink)
        for leg in LEGS:
            self._retap(leg)
        self._arm_recording()
        return sink

    def stop_recording(self) -> None:
        """Close the recording (up to now); `settled()` gives its outcome."""
        recording = self._recording
        if recording is None:
            return
        self._recording = None
        if recording.timer is not None:
            recording.timer.cancel()
        recording.stats = recording.recorder.close(self._clock())
        self._stopped = recording
        if not self.closed:
            for leg in LEGS:
                self._retap(leg)

    async def settled(self) -> RecordingOutcome | None:
        """The last stopped recording's outcome once the disk thread has closed its file
        (at most SETTLE_S), or the one before when none was stopped since; None when the
        call was never recorded."""
        stopped = self._stopped
        if stopped is None:
            return self._outcome
        try:
            late = await asyncio.wait_for(asyncio.shield(stopped.sink.done), SETTLE_S)
        except TimeoutError:
            late = "ETIMEDOUT"
        if self._stopped is stopped:       # the first to get here settles it
            self._stopped = None
            self._outcome = self._settle(stopped, late)
        return self._outcome

    def _settle(self, recording: _Recording, late: str | None) -> RecordingOutcome:
        stats = recording.stats
        assert stats is not None
        reason = stats.error if stats.failed else late
        if reason is not None and not recording.failed:
            recording.failed = True
            self._counters.recordings_failed += 1
        return RecordingOutcome(recording.sink.name, reason, stats.data_bytes)

    def _arm_recording(self) -> None:
        recording = self._recording
        assert recording is not None
        due = recording.recorder.next_due()
        if due is None:
            self._recording_failed(recording)
            return
        recording.timer = self._call_at(due, self._write_due)

    def _write_due(self) -> None:
        recording = self._recording
        if recording is None:
            return
        recording.timer = None
        recording.recorder.tick(self._clock())
        self._arm_recording()

    def _recording_failed(self, recording: _Recording) -> None:
        """The file failed on the disk thread or the recorder stopped itself: counted now,
        untapped, its outcome left for settled(). The call goes on."""
        if recording.failed:
            return
        recording.failed = True
        self._counters.recordings_failed += 1
        if recording.timer is not None:
            recording.timer.cancel()
            recording.timer = None
        for leg in LEGS:
            self._retap(leg)

    def _recording_active(self) -> bool:
        recording = self._recording
        return recording is not None and recording.recorder.active and not recording.failed

    # -- the tap ----------------------------------------------------------------------
    def _retap(self, leg: Leg) -> None:
        """Tap the leg's audio line while a service listens to it; untap otherwise."""
        media = self._media[leg]
        wanted = None if media is None or self.closed or not (
            leg in self._keys or self._recording_active()) else media.line
        tapped = self._tapped.get(leg)
        if tapped == wanted:
            return
        if tapped is not None:
            self.session.tap(leg, tapped, None)
            del self._tapped[leg]
        if wanted is not None:
            self.session.tap(leg, wanted, self._hook(leg))
            self._tapped[leg] = wanted

    def _hook(self, leg: Leg) -> Callable[[bytes, float, bool], None]:
        party = _PARTY[leg]

        def heard(data: bytes, now: float, forwarded: bool) -> None:
            if len(data) < rtp.HEADER_SIZE or 192 <= data[1] <= 223:
                return          # RTCP on a muxed socket (RFC 5761 §4)
            media = self._media[leg]
            if media is None:
                return
            keys = self._keys.get(leg)
            if keys is not None:
                self._hear_keys(leg, keys, media, data)
            recording = self._recording
            if forwarded and recording is not None:
                recording.recorder.feed_rtp(party, now, data, media.codecs)
                if not recording.recorder.active:
                    self._recording_failed(recording)
        return heard

    # -- the end ----------------------------------------------------------------------
    def close(self) -> None:
        """Everything stops (RelaySession.close calls this before pooling the sockets):
        prompts end CLOSED, keys are no longer heard, a recording is closed (its outcome
        kept for `settled()`), every tap is removed."""
        if self.closed:
            return
        for leg in list(self._playing):
            self._end(leg, PlayEnd.CLOSED)
        self._keys.clear()
        self.stop_recording()
        self.closed = True
        for leg in LEGS:
            self._retap(leg)

    def _check_open(self) -> None:
        if self.closed:
            raise MediaError(f"media of call {self.call_id} already ended")

    def _call_at(self, due: float, callback: Callable[..., None], *args: object
                 ) -> asyncio.TimerHandle:
        """A loop timer at `due` on the relay's clock (the loop's own by default)."""
        return self._loop.call_later(max(0.0, due - self._clock()), callback, *args)
