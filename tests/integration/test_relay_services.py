"""Media services on the embedded relay (media/services.py through EmbeddedBackend), with
real UDP sockets on loopback and no engine: the relay on 127.0.0.1, the caller's phone on
127.0.0.2, the callee's on 127.0.0.3.

Pinned here:
- a prompt reaches the leg as RTP from the leg's relay port: one SSRC, sequence +1 and
  timestamp +160 per packet, the marker on the first only, 20 ms apart, the payload the
  WAV's G.711 encoding in the leg's negotiated codec (PCMU, or PCMA when the answer chose
  it); stop_play, delete and shutdown stop it at once; a leg with neither PCMU nor PCMA
  hears nothing;
- early media: open_early answers with the relay's port, the prompt plays there, the
  callee's offer/answer joins the same session (the caller's port and o= sess-id stay) and
  bridging stops the prompt: once the parties hear each other, no prompt packet follows;
- while a prompt plays, neither party hears the other; when it ends they do;
- RFC 4733 keys (with their three end packets) are reported once each, the same key twice
  twice; in-band tones with inband=True;
- a recording of a 1000 Hz caller and a 1600 Hz callee is a 0600 stereo WAV, 1000 Hz left
  and 1600 Hz right; a full disk (/dev/full, the kernel's ENOSPC) or a file that cannot be
  made leaves the call relaying and the outcome failed, counted;
- whatever a service opened (timers, taps, the file) is released by delete, by stop_* and
  by the backend's close, and a call that uses no service is never tapped.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipmask.config.schema import MediaConfig
from sipmask.errors import PortsExhausted
from sipmask.media import rtp
from sipmask.media import services as services_module
from sipmask.media.backend import Leg, PlayEnd
from sipmask.media.embedded import EmbeddedBackend
from sipmask.media.relay import RelaySession, Side, _Stream
from sipmask.media.sinks import FileSink
from sipmask.media.wav import G711, Audio
from sipmask.store.crypto import Keyring
from sipmask.store.recording_file import SealedWriter
from tests.support.goertzel import goertzel_power
from tests.support.media import (
    LOOP_KINDS,
    Runner,
    UdpPeer,
    close_after,
    loop_runner,
    port_range,
    sealed_stereo,
)
from tests.support.tones import dtmf, pcm, silence, sine

RELAY, A_IP, B_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
KEYS = Keyring.generate()
PCMU_ONLY = ("0 101", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
PCMU_PCMA = ("0 8 101", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
             "a=rtpmap:101 telephone-event/8000\r\n")
PCMA_ONLY = ("8 101", "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
G729_ONLY = ("18", "a=rtpmap:18 G729/8000\r\n")


@pytest.fixture(params=LOOP_KINDS)
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    with loop_runner(request.param) as runner:
        yield runner


def config(pairs: int = 8) -> MediaConfig:
    """A range of its own (32000-32999), below the kernel's ephemeral ports."""
    return MediaConfig(address=RELAY,
                       ports=port_range(pairs, first=32000, step=24, spread=900),
                       timeout_s=60)


def backend_for(pairs: int = 8) -> EmbeddedBackend:
    return close_after(EmbeddedBackend(config(pairs), on_timeout=lambda call_id: None))


def sdp(peer: UdpPeer, codecs: tuple[str, str] = PCMU_ONLY, *, extra: str = "",
        video: bool = False) -> bytes:
    host, port = peer.address
    lines = ["v=0", f"o=- 1 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0"]
    body = "\r\n".join(lines) + "\r\n"
    if video:
        body += f"m=video {port + 2} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    return (body + f"m=audio {port} RTP/AVP {codecs[0]}\r\n{codecs[1]}{extra}").encode()


def tone_audio(hz: float, seconds: float) -> Audio:
    return Audio(pcm(sine(hz, seconds)))


def rtp_stream(payload_type: int, codec: G711, audio: bytes, ssrc: int) -> list[bytes]:
    """`audio` (pcm) as 20 ms RTP packets."""
    encoded = codec.encode(audio)
    return [rtp.build(payload_type, n, n * 160, ssrc, encoded[i:i + 160])
            for n, i in enumerate(range(0, len(encoded), 160))]


def event_packets(key_code: int, start_ts: int, seq: int, ssrc: int = 0x4444) -> list[bytes]:
    """One RFC 4733 press: a start with the marker, two updates, three end packets
    (§2.5.1.4: the end is sent three times), all with the event's start timestamp."""
    packets = []
    for n, (duration, end) in enumerate([(160, False), (320, False), (480, False),
                                         (640, True), (640, True), (640, True)]):
        payload = struct.pack("!BBH", key_code, (0x80 if end else 0) | 10, duration)
        packets.append(rtp.build(101, seq + n, start_ts, ssrc, payload, marker=n == 0))
    return packets


async def answered_call(backend: EmbeddedBackend, call_id: str, a: UdpPeer, b: UdpPeer,
                        a_codecs: tuple[str, str] = PCMU_ONLY,
                        b_codecs: tuple[str, str] = PCMU_ONLY) -> tuple[int, int]:
    """Offer from A, answer from B; the relay ports (A's side, B's side) each must send to."""
    to_b = await backend.offer(call_id, "a", sdp(a, a_codecs), sip_source=A_IP)
    to_a = await backend.answer(call_id, "b", sdp(b, b_codecs), sip_source=B_IP)
    return m_port(to_a), m_port(to_b)


def m_port(body: bytes) -> int:
    for line in body.decode().split("\r\n"):
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise AssertionError(f"no audio m= line in {body!r}")


async def received(peer: UdpPeer, wait: float) -> list[tuple[float, bytes]]:
    """What `peer` receives within `wait` seconds, with arrival times."""
    loop = asyncio.get_running_loop()
    got: list[tuple[float, bytes]] = []
    deadline = loop.time() + wait
    while (left := deadline - loop.time()) > 0:
        try:
            data = await peer.recv(timeout=left)
        except TimeoutError:
            break
        got.append((loop.time(), data))
    return got


async def drain(peer: UdpPeer) -> None:
    while not peer.received.empty():
        peer.received.get_nowait()


def session_of(backend: EmbeddedBackend, call_id: str) -> RelaySession:
    session = backend.relay.session(call_id)
    assert session is not None
    return session


def protocols(session: RelaySession) -> list[object]:
    """What each RTP socket of the session hands its packets to."""
    found = []
    for index in range(session.media_count):
        for side in Side:
            stream = session._streams(side, index)[0]
            assert stream.transport is not None
            found.append(stream.transport.get_protocol())
    return found


def untapped(session: RelaySession) -> bool:
    return all(isinstance(p, _Stream) for p in protocols(session))


# -- prompts -------------------------------------------------------------------------------

def test_a_leg_hears_the_prompt_as_pcmu_rtp_every_20_ms(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "p1", a, b)
        audio = tone_audio(440, 0.5)
        playback = await backend.play("p1", "a", audio)
        got = await received(a, 0.8)
        assert await asyncio.wait_for(playback.ended, 1) is PlayEnd.FINISHED
        packets = [(at, rtp.parse(data)) for at, data in got]
        assert len(packets) == 25                                 # 0.5 s in 20 ms packets
        parsed = [p for _, p in packets if p is not None]
        assert len(parsed) == 25
        assert {p.ssrc for p in parsed} == {parsed[0].ssrc}
        assert {p.payload_type for p in parsed} == {0}
        assert [p.marker for p in parsed] == [True] + [False] * 24
        for earlier, later in itertools.pairwise(parsed):
            assert later.sequence == (earlier.sequence + 1) & 0xFFFF
            assert later.timestamp == (earlier.timestamp + 160) & 0xFFFFFFFF
        encoded = G711.PCMU.encode(audio.pcm)
        assert b"".join(p.payload for p in parsed) == encoded
        # On time: 24 intervals of 20 ms, within what a loaded loop allows (no slips:
        # a slip would have broken the timestamp steps above).
        span = packets[-1][0] - packets[0][0]
        assert 0.40 <= span <= 0.60, span
        assert backend.relay.stats().prompt_packets == 25
        assert untapped(session_of(backend, "p1"))    # a prompt needs no tap
    run(test)


def test_a_prompt_wakes_the_loop_once_per_packet(run: Runner) -> None:
    # uvloop keeps time in whole milliseconds and truncates a timer's delay: a due time
    # off the millisecond grid fires early, finds nothing due and re-arms until the
    # millisecond turns (ten wakeups a packet in a bench with such due times). A prompt's
    # due times start at the loop's own time and step by 20 ms, so each wakeup sends.
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "p9", a, b)
        playback = await backend.play("p9", "a", tone_audio(440, 1.0))
        services = backend._services["p9"]
        send_due = services._send_due
        wakeups = 0

        def counted(leg: Leg) -> None:
            nonlocal wakeups
            wakeups += 1
            send_due(leg)
        services._send_due = counted  # type: ignore[method-assign]
        assert await asyncio.wait_for(playback.ended, 2) is PlayEnd.FINISHED
        sent = backend.relay.stats().prompt_packets
        assert sent == 50
        assert wakeups <= sent + 2, (wakeups, sent)
    run(test)


def test_the_prompt_comes_from_the_legs_relay_port(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        a_port, _ = await answered_call(backend, "p2", a, b)
        await backend.play("p2", "a", tone_audio(440, 0.1))
        _, source = await a.recv_from()
        assert source == (RELAY, a_port)
        assert await b.nothing(0.15)           # the other leg hears no prompt
    run(test)


@pytest.mark.parametrize(("a_codecs", "b_codecs", "codec", "payload_type"), [
    (PCMA_ONLY, PCMA_ONLY, G711.PCMA, 8),
    (PCMU_PCMA, PCMA_ONLY, G711.PCMA, 8),      # the answer chose PCMA: negotiated
    (PCMU_PCMA, PCMU_PCMA, G711.PCMU, 0),
])
def test_the_prompt_is_in_the_negotiated_codec(run: Runner, a_codecs: tuple[str, str],
                                               b_codecs: tuple[str, str], codec: G711,
                                               payload_type: int) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "p3", a, b, a_codecs, b_codecs)
        audio = tone_audio(700, 0.06)
        await backend.play("p3", "a", audio)
        parsed = [rtp.parse(data) for _, data in await received(a, 0.2)]
        assert [p.payload_type for p in parsed if p is not None] == [payload_type] * 3
        assert b"".join(p.payload for p in parsed if p is not None) == codec.encode(audio.pcm)
    run(test)


def test_stop_play_stops_it_at_once(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "p4", a, b)
        playback = await backend.play("p4", "a", tone_audio(440, 5.0), loop=True)
        await a.recv()
        await asyncio.sleep(0.1)
        await backend.stop_play("p4", "a")
        assert playback.ended.result() is PlayEnd.STOPPED
        sent = backend._services["p4"]._players["a"].next_sequence   # the next one, unsent
        late = [rtp.parse(d) for _, d in await received(a, 0.2)]    # in flight at the stop
        assert all(p is not None and p.sequence < sent for p in late)
        assert not playback.playing
    run(test)


def test_a_leg_without_pcmu_or_pcma_hears_nothing(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "p5", a, b, G729_ONLY, G729_ONLY)
        playback = await backend.play("p5", "a", tone_audio(440, 0.2))
        assert playback.ended.result() is PlayEnd.UNPLAYABLE
        assert await a.nothing(0.2)
        assert backend.relay.stats().prompts_unplayable == 1
        assert not session_of(backend, "p5").muted    # nothing plays: nothing is muted
    run(test)


def test_a_leg_that_receives_nothing_hears_nothing(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await backend.offer("p6", "a", sdp(a, extra="a=sendonly\r\n"))
        await backend.answer("p6", "b", sdp(b, extra="a=recvonly\r\n"))
        playback = await backend.play("p6", "a", tone_audio(440, 0.2))
        assert playback.ended.result() is PlayEnd.UNPLAYABLE
        assert await a.nothing(0.1)
    run(test)


def test_parties_do_not_hear_each_other_while_a_prompt_plays(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        a_port, b_port = await answered_call(backend, "m1", a, b)
        playback = await backend.play("m1", "b", tone_audio(440, 0.3))    # a notice to B
        from_a = rtp_stream(0, G711.PCMU, pcm(sine(1000, 0.1)), 0xA)
        from_b = rtp_stream(0, G711.PCMU, pcm(sine(1600, 0.1)), 0xB)
        for a_packet, b_packet in zip(from_a, from_b, strict=True):
            a.send(a_packet, (RELAY, a_port))
            b.send(b_packet, (RELAY, b_port))
        heard_by_b = [rtp.parse(d) for _, d in await received(b, 0.15)]
        assert all(p is not None and p.ssrc != 0xA for p in heard_by_b)   # prompt only
        assert await a.nothing(0.0)                                       # B muted too
        assert await asyncio.wait_for(playback.ended, 1) is PlayEnd.FINISHED
        await drain(a)
        await drain(b)
        a.send(from_a[0], (RELAY, a_port))
        b.send(from_b[0], (RELAY, b_port))
        assert await b.recv() == from_a[0]       # the notice over: they hear each other
        assert await a.recv() == from_b[0]
    run(test)


# -- early media ---------------------------------------------------------------------------

def test_early_prompt_then_the_callee_joins_and_bridging_stops_the_prompt(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        early = await backend.open_early("e1", "a", sdp(a, PCMU_PCMA, video=True),
                                         sip_source=A_IP)
        assert early is not None
        text = early.decode()
        assert "m=video 0 " in text and f"c=IN IP4 {RELAY}" in text
        early_port = m_port(early)
        playback = await backend.play("e1", "a", tone_audio(440, 5.0), loop=True)
        data, source = await a.recv_from()
        assert source == (RELAY, early_port)
        prompt_ssrc = rtp.parse(data).ssrc if rtp.parse(data) else None   # type: ignore[union-attr]
        # The callee's leg: the caller's own offer goes to B, B answers.
        to_b = await backend.offer("e1", "a", sdp(a, PCMU_PCMA, video=True), sip_source=A_IP)
        assert not playback.ended.done()                   # B not there yet: still plays
        to_a = await backend.answer("e1", "b", sdp(b, PCMU_PCMA, video=True), sip_source=B_IP)
        assert playback.ended.result() is PlayEnd.BRIDGED
        assert m_port(to_a) == early_port                   # same port: no re-INVITE
        assert origin(to_a)[0] == origin(early)[0]          # same sess-id (RFC 3264 §8)
        assert origin(to_a)[1] == origin(early)[1] + 1
        await drain(a)
        from_b = rtp_stream(0, G711.PCMU, pcm(sine(1600, 0.2)), 0xB)
        for packet in from_b:
            b.send(packet, (RELAY, m_port(to_b)))
            await asyncio.sleep(0.02)
        heard = [rtp.parse(d) for _, d in await received(a, 0.1)]
        assert [p.ssrc for p in heard if p is not None] == [0xB] * len(from_b)
        assert prompt_ssrc not in {p.ssrc for p in heard if p is not None}
    run(test)


def origin(body: bytes) -> tuple[int, int]:
    for line in body.decode().split("\r\n"):
        if line.startswith("o="):
            fields = line[2:].split()
            return int(fields[1]), int(fields[2])
    raise AssertionError("no o=")


def test_early_offer_without_g711_opens_nothing(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a = await UdpPeer.open(A_IP)
        assert await backend.open_early("e2", "a", sdp(a, G729_ONLY)) is None
        assert backend.relay.session("e2") is None
        assert backend.relay.stats().ports_in_use == 0
    run(test)


def test_early_open_that_runs_out_of_ports_gives_everything_back(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for(pairs=2)     # one media line; the audio is on the second
        a = await UdpPeer.open(A_IP)
        body = sdp(a, video=True)
        with pytest.raises(PortsExhausted):
            await backend.open_early("e3", "a", body)
        assert backend.relay.session("e3") is None
        assert backend.relay.stats().ports_in_use == 0
    run(test)


# -- keys ----------------------------------------------------------------------------------

def test_rfc4733_keys_are_reported_once_each(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a = await UdpPeer.open(A_IP)
        early = await backend.open_early("d1", "a", sdp(a))
        assert early is not None and "telephone-event/8000" in early.decode()
        port = m_port(early)
        heard: list[tuple[str, str, str]] = []
        await backend.collect_digits("d1", "a", lambda *d: heard.append(d))
        seq = 1
        for n, code in enumerate([1, 2, 11, 2, 2]):           # 1 2 # 2 2
            for packet in event_packets(code, 8000 * (n + 1), seq):
                a.send(packet, (RELAY, port))
                seq += 1
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert heard == [("d1", "a", k) for k in "12#22"]
        assert backend.relay.stats().digits == 5
        await backend.stop_digits("d1", "a")
        assert untapped(session_of(backend, "d1"))
        for packet in event_packets(5, 99999, seq):
            a.send(packet, (RELAY, port))
        await asyncio.sleep(0.1)
        assert len(heard) == 5
    run(test)


def test_keys_are_heard_while_the_prompt_plays(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a = await UdpPeer.open(A_IP)
        port = m_port(await backend.open_early("d2", "a", sdp(a)) or b"")
        heard: list[str] = []
        await backend.collect_digits("d2", "a", lambda _c, _l, key: heard.append(key))
        playback = await backend.play("d2", "a", tone_audio(440, 2.0))
        for packet in event_packets(7, 1600, 1):
            a.send(packet, (RELAY, port))
        await asyncio.sleep(0.15)
        assert heard == ["7"]
        assert playback.playing                   # the engine decides whether to stop it
    run(test)


def test_inband_keys_with_the_option(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a = await UdpPeer.open(A_IP)
        port = m_port(await backend.open_early("d3", "a", sdp(a)) or b"")
        heard: list[str] = []
        await backend.collect_digits("d3", "a", lambda _c, _l, key: heard.append(key),
                                     inband=True)
        tones = pcm(dtmf("5", 0.1) + silence(0.1) + dtmf("9", 0.1) + silence(0.06))
        for packet in rtp_stream(0, G711.PCMU, tones, 0x77):
            a.send(packet, (RELAY, port))
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.15)
        assert heard == ["5", "9"]
    run(test)


def test_without_inband_tones_are_not_keys(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a = await UdpPeer.open(A_IP)
        port = m_port(await backend.open_early("d4", "a", sdp(a)) or b"")
        heard: list[str] = []
        await backend.collect_digits("d4", "a", lambda _c, _l, key: heard.append(key))
        for packet in rtp_stream(0, G711.PCMU, pcm(dtmf("5", 0.1)), 0x77):
            a.send(packet, (RELAY, port))
        await asyncio.sleep(0.15)
        assert heard == []
    run(test)


# -- recording -----------------------------------------------------------------------------

def sealed(folder: Path, name: str) -> Callable[[], SealedWriter]:
    """The sink factory sipmask serve uses (store/recordings.open_sink), in `folder`."""
    return lambda: SealedWriter.create(folder, name, KEYS, "demo")




async def talk(a: UdpPeer, a_port: int, b: UdpPeer, b_port: int, seconds: float) -> None:
    """The caller sends 1000 Hz, the callee 1600 Hz, as 20 ms PCMU packets on time."""
    from_a = rtp_stream(0, G711.PCMU, pcm(sine(1000, seconds)), 0xA)
    from_b = rtp_stream(0, G711.PCMU, pcm(sine(1600, seconds)), 0xB)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, (a_packet, b_packet) in enumerate(zip(from_a, from_b, strict=True)):
        a.send(a_packet, (RELAY, a_port))
        b.send(b_packet, (RELAY, b_port))
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


def test_a_recorded_call_is_a_0600_stereo_wav_caller_left_callee_right(
        run: Runner, tmp_path: Path) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        a_port, b_port = await answered_call(backend, "r1", a, b)
        await backend.start_recording("r1", sealed(tmp_path, "r1.wav"))
        await talk(a, a_port, b, b_port, 0.6)
        await asyncio.sleep(0.05)
        outcome = await backend.stop_recording("r1")
        assert outcome is not None and outcome.file == "r1.wav" and not outcome.failed
        path = tmp_path / "r1.wav"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        left, right = sealed_stereo(path, KEYS)
        assert len(left) >= 0.6 * 8000
        assert goertzel_power(left, 1000, 8000) > 100 * goertzel_power(left, 1600, 8000)
        assert goertzel_power(right, 1600, 8000) > 100 * goertzel_power(right, 1000, 8000)
        assert goertzel_power(left, 1000, 8000) > 0.01      # not silence
        # Aligned in time: both tones start within a packet or two of each other.
        assert abs(first_sound(left) - first_sound(right)) <= 2 * 160
        assert untapped(session_of(backend, "r1"))
        stats = await backend.delete("r1")
        assert stats.recording == outcome
        assert backend.relay.stats().recordings_started == 1
    run(test)


def first_sound(channel: list[float]) -> int:
    return next(i for i, v in enumerate(channel) if abs(v) > 0.01)


def test_a_full_disk_fails_the_recording_never_the_call(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        a_port, b_port = await answered_call(backend, "r2", a, b)

        def full_disk() -> FileSink:
            # /dev/full: every write fails with the kernel's own ENOSPC.
            return FileSink(os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC),
                            Path("r2.wav"))
        await backend.start_recording("r2", full_disk)
        await talk(a, a_port, b, b_port, 1.5)            # past the first 1 s write
        assert backend.relay.stats().recordings_failed == 1
        assert untapped(session_of(backend, "r2"))       # a failed recorder costs nothing
        await drain(a)
        await drain(b)
        await talk(a, a_port, b, b_port, 0.1)            # still relaying
        assert len(await received(b, 0.1)) == 5
        outcome = await backend.stop_recording("r2")
        assert outcome is not None and outcome.failed_reason == "ENOSPC"
        assert outcome.file == "r2.wav"
        stats = await backend.delete("r2")
        assert stats.recording == outcome and stats.a.packets_in >= 80
        assert backend.relay.stats().recordings_failed == 1     # counted once
    run(test)


def test_a_recording_file_that_cannot_be_made_fails_at_once(run: Runner,
                                                            tmp_path: Path) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        a_port, b_port = await answered_call(backend, "r3", a, b)
        (tmp_path / "r3.wav").write_bytes(b"")            # O_EXCL: EEXIST
        await backend.start_recording("r3", sealed(tmp_path, "r3.wav"))
        assert untapped(session_of(backend, "r3"))
        await talk(a, a_port, b, b_port, 0.1)
        assert len(await received(b, 0.1)) == 5
        stats = await backend.delete("r3")
        assert stats.recording is not None
        assert (stats.recording.file, stats.recording.failed_reason) == (None, "EEXIST")
        assert backend.relay.stats().recordings_failed == 1
    run(test)


class ThreadSpy:
    """A recording file that notes which thread makes it, writes it and closes it."""

    def __init__(self, made_on: int) -> None:
        self.path = Path("spy.wav")
        self.threads = {made_on}
        self.octets = 0

    def write(self, data: bytes) -> None:
        self.threads.add(threading.get_ident())
        self.octets += len(data)

    def close(self) -> None:
        self.threads.add(threading.get_ident())


def test_recording_files_are_made_written_and_closed_off_the_event_loop(run: Runner) -> None:
    # Issue 15: "disk writes off the event loop". The loop thread never touches the file.
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        a_port, b_port = await answered_call(backend, "t1", a, b)
        made: list[ThreadSpy] = []

        def spy() -> ThreadSpy:
            made.append(ThreadSpy(threading.get_ident()))
            return made[0]
        await backend.start_recording("t1", spy)
        await talk(a, a_port, b, b_port, 1.5)            # past the first 1 s write
        outcome = await backend.stop_recording("t1")
        assert outcome is not None and not outcome.failed and outcome.file == "spy.wav"
        [file] = made
        assert file.octets >= 1.4 * 32000
        assert threading.get_ident() not in file.threads
    run(test)



class LastWriteFails(ThreadSpy):
    """The file's close fails (the final chunk finds the disk full); `hold` keeps the close
    waiting, as a stalled disk would."""

    def __init__(self, made_on: int, hold: threading.Event | None = None) -> None:
        super().__init__(made_on)
        self.hold = hold

    def close(self) -> None:
        if self.hold is not None:
            assert self.hold.wait(10)
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failure_of_the_files_close_is_in_the_outcome_and_counted_once(
        run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        a_port, b_port = await answered_call(backend, "t2", a, b)
        await backend.start_recording("t2", lambda: LastWriteFails(0))
        await talk(a, a_port, b, b_port, 0.3)
        outcome = await backend.stop_recording("t2")
        assert outcome is not None and outcome.failed_reason == "ENOSPC"
        assert outcome.file == "spy.wav"
        stats = await backend.delete("t2")
        assert stats.recording == outcome
        assert backend.relay.stats().recordings_failed == 1
    run(test)


def test_a_disk_that_does_not_finish_the_file_in_time_fails_the_recording(
        run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services_module, "SETTLE_S", 0.2)
    hold = threading.Event()

    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "t3", a, b)
        await backend.start_recording("t3", lambda: LastWriteFails(0, hold))
        outcome = await backend.stop_recording("t3")      # the close is stuck on the disk
        assert outcome is not None and outcome.failed_reason == "ETIMEDOUT"
        assert backend.relay.stats().recordings_failed == 1
        hold.set()                                          # the backend's close drains
    try:
        run(test)
    finally:
        hold.set()

# -- releasing ------------------------------------------------------------------------------

@pytest.mark.parametrize("ending", ["delete", "close", "stops"])
def test_every_service_is_released_on_every_ending(run: Runner, tmp_path: Path,
                                                   ending: str) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "x1", a, b)
        playbacks = [await backend.play("x1", leg, tone_audio(440, 5), loop=True)
                     for leg in "ab"]
        await backend.collect_digits("x1", "a", lambda *d: None, inband=True)
        await backend.collect_digits("x1", "b", lambda *d: None)
        files: list[SealedWriter] = []

        def recorded() -> SealedWriter:
            files.append(sealed(tmp_path, "x1.wav")())
            return files[-1]
        await backend.start_recording("x1", recorded)
        session = session_of(backend, "x1")
        services = backend._services["x1"]
        assert services._recording is not None
        [sink] = files
        assert not untapped(session) and session.muted
        await a.recv()
        # The timers armed now (each tick arms the next); nothing below yields to the loop
        # before the ending has run.
        timers = [p.timer for p in services._playing.values()]
        timers.append(services._recording.timer)
        # Block (not yield) past every timer's due time: an ending that yields to the loop
        # before it releases lets them run and arm the next ones.
        time.sleep(0.05)
        if ending == "delete":
            await backend.delete("x1")
            expected = PlayEnd.CLOSED
        elif ending == "close":
            await backend.close()
            expected = PlayEnd.CLOSED
        else:
            for leg in "ab":
                await backend.stop_play("x1", leg)
                await backend.stop_digits("x1", leg)
            await backend.stop_recording("x1")
            expected = PlayEnd.STOPPED
            assert untapped(session) and not session.muted
        assert [p.ended.result() for p in playbacks] == [expected, expected]
        assert all(t is not None and t.cancelled() for t in timers)
        assert sink._file._fd is None                            # the file is closed
        await drain(a)
        await drain(b)
        assert await a.nothing(0.1) and await b.nothing(0.0)
        if ending != "close":
            await backend.delete("x1")
            await backend.close()
        assert services.closed
        # The pooled (or closed) sockets are plain again.
        assert all(isinstance(p, _Stream) for _, _, streams in backend.relay._idle
                   for s in streams if s.transport is not None
                   for p in [s.transport.get_protocol()])
        assert backend.relay.stats().ports_in_use == 0
    run(test)


def test_a_call_without_services_is_never_tapped(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "n1", a, b)
        session = session_of(backend, "n1")
        assert untapped(session) and session.services is None and not session.muted
        assert "n1" not in backend._services
    run(test)


def test_services_on_an_unknown_call_are_refused(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        with pytest.raises(Exception, match="no media session"):
            await backend.play("nope", "a", tone_audio(440, 0.1))
        with pytest.raises(Exception, match="no media session"):
            await backend.start_recording("nope", sealed(Path("/tmp"), "x.wav"))
        assert await backend.stop_recording("nope") is None
        await backend.stop_play("nope", "a")          # nothing to stop: no error
    run(test)


def test_a_media_line_added_while_a_prompt_plays_is_muted_too(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        a_video, b_video = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await answered_call(backend, "m2", a, b)
        playback = await backend.play("m2", "a", tone_audio(440, 5.0))

        def with_video(peer: UdpPeer, video: UdpPeer) -> bytes:
            # RFC 3264 §8: a re-offer keeps its m= lines and appends the new one.
            return sdp(peer) + (f"m=video {video.port} RTP/AVP 96\r\n"
                                "a=rtpmap:96 H264/90000\r\n").encode()
        await backend.offer("m2", "a", with_video(a, a_video))
        await backend.answer("m2", "b", with_video(b, b_video))
        session = session_of(backend, "m2")
        assert session.media_count == 2 and playback.playing
        frame = rtp.build(96, 1, 0, 0x7, b"video")
        a_video.send(frame, (RELAY, session.local(Side.A, 1).rtp))
        assert await b_video.nothing(0.1)
        await backend.stop_play("m2", "a")
        a_video.send(frame, (RELAY, session.local(Side.A, 1).rtp))
        assert await b_video.recv() == frame
    run(test)
