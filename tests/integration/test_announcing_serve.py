"""Announcements and the AXE extension prompt through a real `sipmask serve` (issue 15):
plain UDP sockets play the caller (SIP on 127.0.0.2, its RTP beside it) and the trunk's
callee (127.0.0.3); the media is the embedded relay's.

Pinned here, end to end (the call core's rules are tests/unit/b2bua/test_announcing.py):
- an unbound X: 183 with sipmask's SDP (the relay's address, telephone-event because the
  caller offered it), the announcement arriving as RTP from the 183's port in the caller's
  codec (the WAV's tone in it), then 404 in the same dialog, and the relay ports given back;
  a caller offering neither PCMU nor PCMA gets the bare 404 and no RTP;
- an AXE X alone: the prompt plays, RFC 4733 key events sent to the 183's port reach the
  engine, the extension routes the call to A, and the answered call runs on the same port.
"""

from __future__ import annotations

import socket
import struct
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sipmask.config.schema import HostPort
from sipmask.media import rtp
from sipmask.media.wav import G711, encode_wav
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import parse_message
from tests.support.goertzel import goertzel_power
from tests.support.net import LOOPBACK, free_port
from tests.support.rtpengine import free_udp_range, running_daemon
from tests.support.serve import ServeProcess, sipmask_cli
from tests.support.tones import dtmf, pcm, silence, sine

A, X, STRANGER = "13800000001", "700100000000001", "13700000003"
CALLER_IP, CALLEE_IP = "127.0.0.2", "127.0.0.3"
PCMU = ("0 101", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
PCMU_ONLY = ("0", "a=rtpmap:0 PCMU/8000\r\n")           # no telephone-event
PCMA = ("8 101", "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
G729 = ("18", "a=rtpmap:18 G729/8000\r\n")


class Peer:
    """A SIP socket and an RTP socket on one loopback address."""

    def __init__(self, ip: str) -> None:
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind((ip, free_port(ip)))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((ip, 0))
        self.ip = ip

    @property
    def sip_port(self) -> int:
        return int(self.sip.getsockname()[1])

    @property
    def rtp_port(self) -> int:
        return int(self.rtp.getsockname()[1])

    def sdp(self, codecs: tuple[str, str]) -> str:
        return (f"v=0\r\no=- 1 1 IN IP4 {self.ip}\r\ns=-\r\nc=IN IP4 {self.ip}\r\nt=0 0\r\n"
                f"m=audio {self.rtp_port} RTP/AVP {codecs[0]}\r\n{codecs[1]}")

    def message(self, within: float = 5.0) -> Request | Response:
        self.sip.settimeout(within)
        data, _ = self.sip.recvfrom(65535)
        return parse_message(data)

    def responses_until_final(self, within: float = 10.0) -> list[Response]:
        out: list[Response] = []
        deadline = time.monotonic() + within
        while not out or out[-1].status < 200:
            message = self.message(max(0.01, deadline - time.monotonic()))
            if isinstance(message, Response) and message.cseq.method == "INVITE":
                out.append(message)
        return out

    def early(self) -> Response:
        """The 183 (after the 100)."""
        while True:
            message = self.message()
            assert isinstance(message, Response) and message.status in (100, 183), message
            if message.status == 183:
                return message

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()


@pytest.fixture
def peers() -> Iterator[tuple[Peer, Peer]]:
    caller, callee = Peer(CALLER_IP), Peer(CALLEE_IP)
    yield caller, callee
    caller.close()
    callee.close()


def invite(caller: Peer, server: ServeProcess, x: str, codecs: tuple[str, str],
           number: str = STRANGER) -> bytes:
    body = caller.sdp(codecs)
    host, port = server.udp
    return (f"INVITE sip:{x}@{host}:{port};user=phone SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {caller.ip}:{caller.sip_port};branch=z9hG4bKann1;rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{number}@{caller.ip}>;tag=ca1\r\n"
            f"To: <sip:{x}@{host}>\r\nCall-ID: ann-{x}@{caller.ip}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:{number}@{caller.ip}:{caller.sip_port}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n{body}"
            ).encode()


def ack_for(invite_text: bytes, final: Response) -> bytes:
    """The ACK of a non-2xx final answer: the INVITE's branch, the answer's To (§17.1.1.3)."""
    lines = invite_text.decode().split("\r\n")
    via = next(v for v in lines if v.startswith("Via:"))
    from_ = next(v for v in lines if v.startswith("From:"))
    call_id = next(v for v in lines if v.startswith("Call-ID:"))
    return (f"ACK {lines[0].split()[1]} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n{from_}\r\n"
            f"To: {final.headers.get('to')}\r\n{call_id}\r\nCSeq: 1 ACK\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def m_port(body: bytes) -> int:
    for line in body.decode().split("\r\n"):
        if line.startswith("m=audio "):
            return int(line.split()[1])
    raise AssertionError(f"no audio m= line in {body!r}")


def rtp_packets(sock: socket.socket, within: float) -> list[tuple[rtp.RtpPacket, int]]:
    """The RTP packets (with their source port) reaching `sock` for `within` seconds."""
    found: list[tuple[rtp.RtpPacket, int]] = []
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, source = sock.recvfrom(2048)
        except TimeoutError:
            break
        packet = rtp.parse(data)
        if packet is not None:
            found.append((packet, int(source[1])))
    return found


def metric(api_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture
def tone_file(tmp_path: Path) -> Path:
    """A 0.6 s 1000 Hz announcement (the packaged ones are 4-7 s of speech)."""
    path = tmp_path / "tone.wav"
    path.write_bytes(encode_wav(pcm(sine(1000.0, 0.6))))
    return path


def start(serve: Callable[..., ServeProcess], tmp_path: Path, callee: Peer,
          *overrides: str) -> tuple[ServeProcess, int, Path]:
    api_port = free_port()
    store = tmp_path / "calls.lmdb"
    server = serve("--set", f"store.path={store}",
                   "--set", f"trunks.carrier.outbound=udp://{CALLEE_IP}:{callee.sip_port}",
                   "--set", "media.ports=43000-43199",
                   "--set", f"api.listen=127.0.0.1:{api_port}", *overrides)
    return server, api_port, store


@pytest.mark.parametrize(("codecs", "codec"), [(PCMU, G711.PCMU), (PCMA, G711.PCMA)])
def test_an_unbound_x_plays_its_announcement_as_early_media_then_404(
        serve: Callable[..., ServeProcess], tmp_path: Path, peers: tuple[Peer, Peer],
        tone_file: Path, codecs: tuple[str, str], codec: G711) -> None:
    caller, callee = peers
    server, api_port, _store = start(serve, tmp_path, callee,
                                     "--set", f"announcements.unbound={tone_file}")
    text = invite(caller, server, "700100000000999", codecs)
    caller.sip.sendto(text, server.udp)
    ringing = caller.early()
    assert ringing.status == 183 and ringing.headers.get("content-type") == "application/sdp"
    body = ringing.body.decode()
    assert "c=IN IP4 127.0.0.1" in body and "telephone-event/8000" in body
    assert CALLER_IP not in body and STRANGER not in body
    relay_port = m_port(ringing.body)
    packets = rtp_packets(caller.rtp, 1.2)
    assert len(packets) >= 25                  # 0.6 s of 20 ms packets
    assert {port for _, port in packets} == {relay_port}
    assert {p.payload_type for p, _ in packets} == {0 if codec is G711.PCMU else 8}
    audio = b"".join(codec.decode(p.payload) for p, _ in packets)
    samples = [v / 32768.0 for v in memoryview(audio).cast("h")]
    assert goertzel_power(samples, 1000.0, 8000) > 50 * goertzel_power(samples, 1600.0, 8000)
    [final] = caller.responses_until_final()
    assert final.status == 404 and final.to.tag == ringing.to.tag
    caller.sip.sendto(ack_for(text, final), server.udp)
    assert rtp_packets(caller.rtp, 0.3) == []          # nothing after the 404
    deadline = time.monotonic() + 5
    while metric(api_port, "sipmask_media_ports_in_use") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(api_port, "sipmask_media_ports_in_use") == 0


def test_a_caller_offering_neither_pcmu_nor_pcma_gets_the_bare_404(
        serve: Callable[..., ServeProcess], tmp_path: Path, peers: tuple[Peer, Peer],
        tone_file: Path) -> None:
    caller, callee = peers
    server, _api, _store = start(serve, tmp_path, callee,
                                 "--set", f"announcements.unbound={tone_file}")
    caller.sip.sendto(invite(caller, server, "700100000000999", G729), server.udp)
    assert [r.status for r in caller.responses_until_final()] == [100, 404]
    assert rtp_packets(caller.rtp, 0.3) == []


def key_events(key_code: int, timestamp: int, seq: int) -> list[bytes]:
    """One RFC 4733 press: its start (marker) and its end, sent three times (§2.5.1.4)."""
    packets = []
    for n, (duration, end) in enumerate([(160, False), (480, True), (480, True), (480, True)]):
        payload = struct.pack("!BBH", key_code, (0x80 if end else 0) | 10, duration)
        packets.append(rtp.build(101, seq + n, timestamp, 0x5151, payload, marker=n == 0))
    return packets


def press_rfc4733(caller: Peer, relay: tuple[str, int], keys: str) -> None:
    """`keys` as RFC 4733 presses into the relay port the 183 named."""
    seq = 1
    for n, key in enumerate(keys):
        for packet in key_events(int(key), 8000 * (n + 1), seq):
            caller.rtp.sendto(packet, relay)
        seq += 4
        time.sleep(0.05)


def prompted_call_reaches_a(server: ServeProcess, caller: Peer, callee: Peer,
                            press: Callable[[tuple[str, int]], None],
                            codecs: tuple[str, str] = PCMU) -> tuple[Response, Request]:
    """Call the AXE X alone: the prompt plays as early media, `press` keys the extension
    into the 183's media port, the new leg goes to A, and A's answer reaches the caller in
    the same dialog on the same media port. Returns the caller's 200 and leg B's INVITE."""
    text = invite(caller, server, X, codecs)
    caller.sip.sendto(text, server.udp)
    ringing = caller.early()
    relay = ("127.0.0.1", m_port(ringing.body))
    assert rtp_packets(caller.rtp, 0.2)          # the prompt plays
    press(relay)
    leg_b = callee.message()
    assert isinstance(leg_b, Request) and leg_b.method == "INVITE"
    assert leg_b.uri.startswith(f"sip:{A}@")
    vias = "".join(f"Via: {v}\r\n" for v in leg_b.headers.get_fields("via"))
    answer_sdp = callee.sdp(PCMU)
    callee.sip.sendto((
        f"SIP/2.0 200 OK\r\n{vias}From: {leg_b.headers.get('from')}\r\n"
        f"To: {leg_b.headers.get('to')};tag=cb1\r\nCall-ID: {leg_b.call_id}\r\n"
        f"CSeq: {leg_b.headers.get('cseq')}\r\n"
        f"Contact: <sip:{A}@{CALLEE_IP}:{callee.sip_port}>\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(answer_sdp)}\r\n\r\n"
        f"{answer_sdp}").encode(), server.udp)
    [ok] = caller.responses_until_final()
    assert ok.status == 200 and ok.to.tag == ringing.to.tag
    assert m_port(ok.body) == relay[1]           # the early session is the call's media
    return ok, leg_b


def hang_up(server: ServeProcess, caller: Peer, callee: Peer, ok: Response) -> None:
    """The caller ACKs its 200 and hangs up; the callee answers the BYE sipmask sends on,
    so the node has no call left (it stops at once)."""
    call_id, from_, to = ok.call_id, ok.headers.get("from"), ok.headers.get("to")
    for cseq, method in ((1, "ACK"), (2, "BYE")):
        caller.sip.sendto((
            f"{method} sip:{X}@{server.udp[0]}:{server.udp[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {caller.ip}:{caller.sip_port};branch=z9hG4bKhu{cseq}\r\n"
            f"Max-Forwards: 70\r\nFrom: {from_}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n").encode(), server.udp)
    bye = callee.message()
    while isinstance(bye, Request) and bye.method == "ACK":      # sipmask's ACK of A's 200
        bye = callee.message()
    assert isinstance(bye, Request) and bye.method == "BYE", bye
    vias = "".join(f"Via: {v}\r\n" for v in bye.headers.get_fields("via"))
    callee.sip.sendto((
        f"SIP/2.0 200 OK\r\n{vias}From: {bye.headers.get('from')}\r\n"
        f"To: {bye.headers.get('to')}\r\nCall-ID: {bye.call_id}\r\n"
        f"CSeq: {bye.headers.get('cseq')}\r\nContent-Length: 0\r\n\r\n").encode(),
        server.udp)
    final = caller.message()
    assert isinstance(final, Response) and final.cseq.method == "BYE" and final.status == 200


def bind_axe_0042(tmp_path: Path) -> None:
    """The AXE binding the prompt tests key into: A on X, extension 0042, no expiry, in the
    store `start` opens (tmp_path / "calls.lmdb")."""
    sipmask_cli(tmp_path / "calls.lmdb", "bind", "axe", "--a", A, "--x", X, "--ext", "0042",
                "--ttl", "0")


def test_the_axe_prompt_takes_rfc4733_keys_and_routes_the_call_to_a(
        serve: Callable[..., ServeProcess], tmp_path: Path, peers: tuple[Peer, Peer],
        tone_file: Path) -> None:
    caller, callee = peers
    bind_axe_0042(tmp_path)
    server, api_port, _ = start(serve, tmp_path, callee,
                                "--set", f"announcements.ext_prompt={tone_file}")
    _ok, leg_b = prompted_call_reaches_a(
        server, caller, callee, lambda relay: press_rfc4733(caller, relay, "0042"))
    # The parties hear each other through it: the callee's RTP reaches the caller.
    callee_relay = ("127.0.0.1", m_port(leg_b.body))
    for n in range(5):
        callee.rtp.sendto(rtp.build(0, n, n * 160, 0x7777, bytes(160)), callee_relay)
    heard = [p for p, port in rtp_packets(caller.rtp, 0.5) if p.ssrc == 0x7777]
    assert len(heard) == 5
    assert metric(api_port, "sipmask_active_calls") == 1


@pytest.mark.rtpengine
def test_with_rtpengine_rfc4733_keys_reach_the_prompt_through_its_dtmf_log(
        serve: Callable[..., ServeProcess], tmp_path: Path, peers: tuple[Peer, Peer],
        tone_file: Path) -> None:
    # rtpengine reports RFC 4733 events only to its --dtmf-log-dest; serve listens there
    # (media.rtpengine.dtmf_log) from start-up, before any call.
    caller, callee = peers
    bind_axe_0042(tmp_path)
    dtmf_log = HostPort(LOOPBACK, free_port())
    with running_daemon(tmp_path, free_udp_range(),
                        extra=[f"--dtmf-log-dest={dtmf_log}"]) as daemon:
        server, api_port, _ = start(serve, tmp_path, callee,
                                    "--set", f"announcements.ext_prompt={tone_file}",
                                    "--set", "media.backend=rtpengine",
                                    "--set", f"media.rtpengine.ng={daemon.ng}",
                                    "--set", f"media.rtpengine.dtmf_log={dtmf_log}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken, \
                pytest.raises(OSError):
            taken.bind((dtmf_log.host, dtmf_log.port))     # serve holds it already
        ok, _leg_b = prompted_call_reaches_a(
            server, caller, callee, lambda relay: press_rfc4733(caller, relay, "0042"))
        assert metric(api_port, "sipmask_media_digits_total") == 4
        hang_up(server, caller, callee, ok)
        assert server.stop() == 0


def test_a_dtmf_log_address_that_cannot_be_bound_stops_start_up_naming_the_key(
        serve: Callable[..., ServeProcess], tmp_path: Path, peers: tuple[Peer, Peer]) -> None:
    _caller, callee = peers
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, 0))
        busy = f"{LOOPBACK}:{taken.getsockname()[1]}"
        with pytest.raises(AssertionError, match=(
                rf"exited 1:\nsipmask: cannot listen for rtpengine's DTMF log on {busy} "
                r"\(media.rtpengine.dtmf_log\): Address already in use")):
            start(serve, tmp_path, callee, "--set", "media.backend=rtpengine",
                  "--set", f"media.rtpengine.dtmf_log={busy}")


def press_tones(caller: Peer, relay: tuple[str, int], keys: str) -> None:
    """`keys` as in-band DTMF tones (100 ms each, 100 ms apart) in PCMU RTP, no RFC 4733."""
    audio = []
    for key in keys:
        audio += dtmf(key, 0.1) + silence(0.1)
    encoded = G711.PCMU.encode(pcm(audio))
    for n, at in enumerate(range(0, len(encoded), 160)):
        caller.rtp.sendto(rtp.build(0, n, n * 160, 0x7171, encoded[at:at + 160]), relay)
        time.sleep(0.002)


def test_a_trunk_with_inband_dtmf_keys_the_extension_with_tones(
        serve: Callable[..., ServeProcess], tmp_path: Path, peers: tuple[Peer, Peer],
        tone_file: Path) -> None:
    # trunks.<t>.inband_dtmf: a trunk that sends neither RFC 4733 nor INFO keys the AXE
    # extension with tones the embedded relay hears (media/dtmf.py's Goertzel detector).
    caller, callee = peers
    bind_axe_0042(tmp_path)
    server, api_port, _ = start(serve, tmp_path, callee,
                                "--set", f"announcements.ext_prompt={tone_file}",
                                "--set", "trunks.carrier.inband_dtmf=true")
    ok, _leg_b = prompted_call_reaches_a(
        server, caller, callee, lambda relay: press_tones(caller, relay, "0042"),
        codecs=PCMU_ONLY)
    assert metric(api_port, "sipmask_media_digits_total") == 4
    hang_up(server, caller, callee, ok)
