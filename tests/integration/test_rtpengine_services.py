"""Media services through the real rtpengine (Debian rtpengine-daemon 10.5, userspace):
what its ng `play media`, `block media`, `start recording` and DTMF log give, behind the
same MediaBackend methods as the embedded relay (media/rtpengine.py's module docstring).

The daemon runs with `--recording-method=pcap --recording-dir=<tmp>` and
`--dtmf-log-dest=<our listener>`. Pinned here:
- early media: open_early answers with rtpengine's port, the prompt plays there as PCMU
  at 20 ms with one SSRC and steps of +1/+160, the callee's offer/answer keeps the
  caller's port ("port-latching") and bridging stops the prompt;
- while a prompt plays the parties do not hear each other (block media + block DTMF), and
  after stop_play they do; a leg without PCMU/PCMA gets UNPLAYABLE;
- RFC 4733 keys come once each through the DTMF log; in-band is refused;
- a recording of a 1000 Hz caller and a 1600 Hz callee becomes the same 0600 stereo WAV
  as with the relay (left 1000 Hz, right 1600 Hz) and rtpengine's pcap is removed; a full
  disk gives an ENOSPC outcome; delete finishes a running recording.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipmask.config.schema import HostPort
from sipmask.errors import RtpengineError
from sipmask.media import rtp
from sipmask.media.backend import PlayEnd
from sipmask.media.rtpengine import RtpengineBackend
from sipmask.media.sinks import FileSink
from sipmask.media.wav import G711, Audio
from sipmask.store.crypto import Keyring
from sipmask.store.recording_file import SealedWriter
from tests.support.goertzel import goertzel_power
from tests.support.media import Runner, UdpPeer, close_after, loop_runner, sealed_stereo
from tests.support.net import LOOPBACK, free_port
from tests.support.rtpengine import Daemon, free_udp_range, running_daemon
from tests.support.tones import pcm, sine

pytestmark = pytest.mark.rtpengine

PCMU = ("0 101", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
G729 = ("18", "a=rtpmap:18 G729/8000\r\n")


class Services:
    def __init__(self, daemon: Daemon, dtmf: HostPort, recordings: Path) -> None:
        self.daemon = daemon
        self.dtmf = dtmf
        self.recordings = recordings


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    workdir = tmp_path_factory.mktemp("rtpengine-services")
    recordings = workdir / "recordings"
    recordings.mkdir(mode=0o700)
    dtmf = HostPort(LOOPBACK, free_port())
    with running_daemon(workdir, free_udp_range(), extra=[
            f"--recording-dir={recordings}", "--recording-method=pcap",
            f"--dtmf-log-dest={dtmf}"]) as daemon:
        yield Services(daemon, dtmf, recordings)


@pytest.fixture
def run() -> Iterator[Runner]:
    with loop_runner("asyncio") as runner:
        yield runner


def backend_for(services: Services, tmp_path: Path) -> RtpengineBackend:
    return close_after(RtpengineBackend(
        services.daemon.media_config(), dtmf_listen=services.dtmf,
        recording_dir=services.recordings, prompt_dir=tmp_path / "prompts"))


def sdp(peer: UdpPeer, codecs: tuple[str, str] = PCMU) -> bytes:
    host, port = peer.address
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {codecs[0]}\r\n{codecs[1]}").encode()


def m_port(body: bytes) -> int:
    for line in body.decode().split("\r\n"):
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise AssertionError(body)


async def received(peer: UdpPeer, wait: float) -> list[rtp.RtpPacket]:
    loop = asyncio.get_running_loop()
    got: list[rtp.RtpPacket] = []
    deadline = loop.time() + wait
    while (left := deadline - loop.time()) > 0:
        try:
            data = await peer.recv(timeout=left)
        except TimeoutError:
            break
        packet = rtp.parse(data)
        assert packet is not None
        got.append(packet)
    return got


async def drain(peer: UdpPeer) -> None:
    await asyncio.sleep(0.05)
    while not peer.received.empty():
        peer.received.get_nowait()


def stream(hz: float, seconds: float, ssrc: int) -> list[bytes]:
    encoded = G711.PCMU.encode(pcm(sine(hz, seconds)))
    return [rtp.build(0, n, n * 160, ssrc, encoded[i:i + 160])
            for n, i in enumerate(range(0, len(encoded), 160))]


async def talk(a: UdpPeer, a_port: int, b: UdpPeer, b_port: int, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, (x, y) in enumerate(zip(stream(1000, seconds, 0xA), stream(1600, seconds, 0xB),
                                   strict=True)):
        a.send(x, (LOOPBACK, a_port))
        b.send(y, (LOOPBACK, b_port))
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


async def answered(backend: RtpengineBackend, call_id: str, a: UdpPeer, b: UdpPeer,
                   b_codecs: tuple[str, str] = PCMU) -> tuple[int, int]:
    to_b = await backend.offer(call_id, "a", sdp(a))
    to_a = await backend.answer(call_id, "b", sdp(b, b_codecs))
    return m_port(to_a), m_port(to_b)


def test_early_prompt_then_the_callee_joins_on_the_same_port(
        run: Runner, services: Services, tmp_path: Path) -> None:
    async def test() -> None:
        backend = backend_for(services, tmp_path)
        a, b = await UdpPeer.open(), await UdpPeer.open()
        early = await backend.open_early("re1", "a", sdp(a))
        assert early is not None
        playback = await backend.play("re1", "a", Audio(pcm(sine(1000, 5.0))), loop=True)
        got = await received(a, 0.5)
        assert 18 <= len(got) <= 30                                  # 20 ms packets
        assert {p.ssrc for p in got} == {got[0].ssrc}
        assert {p.payload_type for p in got} == {0}
        for earlier, later in itertools.pairwise(got):
            assert later.sequence == (earlier.sequence + 1) & 0xFFFF
            assert later.timestamp == (earlier.timestamp + 160) & 0xFFFFFFFF
        heard = [v / 32768 for v in memoryview(
            G711.PCMU.decode(b"".join(p.payload for p in got))).cast("h")]
        assert goertzel_power(heard, 1000, 8000) > 100 * goertzel_power(heard, 1600, 8000)
        to_b = await backend.offer("re1", "a", sdp(a))
        to_a = await backend.answer("re1", "b", sdp(b))
        assert m_port(to_a) == m_port(early)                      # no re-INVITE needed
        assert playback.ended.result() is PlayEnd.BRIDGED
        await drain(a)
        await talk(a, m_port(to_a), b, m_port(to_b), 0.2)
        heard_by_a = await received(a, 0.2)
        assert heard_by_a and {p.ssrc for p in heard_by_a} == {0xB}   # no prompt left
        await backend.delete("re1")
    run(test)


def test_parties_are_muted_while_a_prompt_plays_and_hear_each_other_after(
        run: Runner, services: Services, tmp_path: Path) -> None:
    async def test() -> None:
        backend = backend_for(services, tmp_path)
        a, b = await UdpPeer.open(), await UdpPeer.open()
        a_port, b_port = await answered(backend, "rm1", a, b)
        playback = await backend.play("rm1", "b", Audio(pcm(sine(440, 5.0))))
        await talk(a, a_port, b, b_port, 0.3)
        for event in range(3):                     # keys do not cross either
            a.send(rtp.build(101, 100 + event, 8000, 0xA,
                             struct.pack("!BBH", 5, 0x80, 640)), (LOOPBACK, a_port))
        b_heard = await received(b, 0.2)
        assert b_heard and all(p.ssrc != 0xA for p in b_heard)   # the prompt, not A
        assert await received(a, 0.05) == []                      # B is muted for A
        await backend.stop_play("rm1", "b")
        assert playback.ended.result() is PlayEnd.STOPPED
        await drain(a)
        await drain(b)
        await talk(a, a_port, b, b_port, 0.2)
        assert {p.ssrc for p in await received(b, 0.2)} == {0xA}
        assert {p.ssrc for p in await received(a, 0.05)} == {0xB}
        await backend.delete("rm1")
    run(test)


def test_a_leg_without_g711_gets_no_prompt(run: Runner, services: Services,
                                           tmp_path: Path) -> None:
    async def test() -> None:
        backend = backend_for(services, tmp_path)
        a, b = await UdpPeer.open(), await UdpPeer.open()
        to_b = await backend.offer("rn1", "a", sdp(a, G729))
        await backend.answer("rn1", "b", sdp(b, G729))
        assert to_b
        playback = await backend.play("rn1", "a", Audio(pcm(sine(440, 0.5))))
        assert playback.ended.result() is PlayEnd.UNPLAYABLE
        assert await a.nothing(0.2)
        assert await backend.open_early("rn2", "a", sdp(a, G729)) is None
        await backend.delete("rn1")
    run(test)


def test_rfc4733_keys_come_once_each_through_the_dtmf_log(
        run: Runner, services: Services, tmp_path: Path) -> None:
    async def test() -> None:
        backend = backend_for(services, tmp_path)
        a = await UdpPeer.open()
        port = m_port(await backend.open_early("rd1", "a", sdp(a)) or b"")
        heard: list[tuple[str, str, str]] = []
        await backend.collect_digits("rd1", "a", lambda *d: heard.append(d))
        with pytest.raises(RtpengineError, match="in-band"):
            await backend.collect_digits("rd1", "a", lambda *d: None, inband=True)
        seq = 1
        for n, code in enumerate([4, 11, 4]):                   # 4 # 4
            for k, (duration, end) in enumerate([(160, 0), (320, 0), (640, 1), (640, 1),
                                                 (640, 1)]):
                payload = struct.pack("!BBH", code, 0x80 if end else 0, duration)
                a.send(rtp.build(101, seq, 8000 * (n + 1), 0x44, payload, marker=k == 0),
                       (LOOPBACK, port))
                seq += 1
                await asyncio.sleep(0.02)
        for _ in range(50):
            if len(heard) == 3:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        assert heard == [("rd1", "a", k) for k in "4#4"]
        await backend.delete("rd1")
    run(test)


KEYS = Keyring.generate()




def test_a_recorded_call_becomes_the_stereo_wav(run: Runner, services: Services,
                                                tmp_path: Path) -> None:
    async def test() -> None:
        backend = backend_for(services, tmp_path)
        a, b = await UdpPeer.open(), await UdpPeer.open()
        a_port, b_port = await answered(backend, "rr1", a, b)
        out = tmp_path / "out"
        await backend.start_recording(
            "rr1", lambda: SealedWriter.create(out, "rr1.wav", KEYS, "demo"))
        await talk(a, a_port, b, b_port, 0.6)
        outcome = await backend.stop_recording("rr1")
        assert outcome is not None and outcome.file == "rr1.wav" and not outcome.failed
        path = out / "rr1.wav"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        left, right = sealed_stereo(path, KEYS)
        assert len(left) >= 0.55 * 8000
        assert goertzel_power(left, 1000, 8000) > 100 * goertzel_power(left, 1600, 8000)
        assert goertzel_power(right, 1600, 8000) > 100 * goertzel_power(right, 1000, 8000)
        assert list((services.recordings / "pcaps").glob("rr1-*")) == []    # removed
        assert list((services.recordings / "metadata").glob("*rr1-*")) == []
        stats = await backend.delete("rr1")
        assert stats.recording == outcome
    run(test)


def test_delete_finishes_a_running_recording_and_a_full_disk_fails_it(
        run: Runner, services: Services, tmp_path: Path) -> None:
    async def test() -> None:
        backend = backend_for(services, tmp_path)
        a, b = await UdpPeer.open(), await UdpPeer.open()
        a_port, b_port = await answered(backend, "rr2", a, b)

        def full_disk() -> FileSink:
            return FileSink(os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC), Path("rr2.wav"))
        await backend.start_recording("rr2", full_disk)
        await talk(a, a_port, b, b_port, 1.2)
        stats = await backend.delete("rr2")
        assert stats.recording is not None
        assert (stats.recording.file, stats.recording.failed_reason) == ("rr2.wav", "ENOSPC")
        assert backend.services.recordings_failed == 1
        assert list((services.recordings / "pcaps").glob("rr2-*")) == []
    run(test)
