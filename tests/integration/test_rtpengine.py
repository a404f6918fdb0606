"""RtpengineBackend against the real daemon (Debian rtpengine-daemon 10.5, userspace mode).

Starts `rtpengine --table=-1` on loopback with its own ng port and RTP port range, then:
ping; offer/answer a real SDP (with ICE, a named o= user and a foreign origin address);
RTP both ways through it, each party hearing only rtpengine's ports; counters from query
and delete; a re-offer (hold) in the established call; errors are typed; the media-timeout
watch ends a silent call, spares a held one and reports a call rtpengine dropped.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from sipmask.config.schema import HostPort, MediaConfig, RtpengineConfig
from sipmask.errors import MediaError, ParseError, RtpengineError
from sipmask.media.rtpengine import NgClient, RtpengineBackend
from sipmask.sdp import SdpError
from tests.support.net import LOOPBACK, free_port
from tests.support.rtpengine import Daemon

pytestmark = pytest.mark.rtpengine

STRANGER = "127.0.0.5"


def offer_sdp(port: int, user: str = "alice", direction: str = "sendrecv") -> bytes:
    return (f"v=0\r\no={user} 2890844526 2890844526 IN IP4 127.0.0.2\r\ns=Talk to Bob\r\n"
            f"c=IN IP4 {LOOPBACK}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a={direction}\r\na=ssrc:305419896 cname:alice@host.example\r\n"
            "a=ice-ufrag:F7gI\r\na=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n"
            f"a=candidate:1 1 UDP 2130706431 192.0.2.10 {port} typ host\r\n").encode()


def plain_sdp(host: str, port: int) -> bytes:
    """A phone's SDP without ICE lines: with them rtpengine ignores the SIP source address
    (media/rtpengine.py's module docstring)."""
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()


def media_port(sdp: bytes) -> int:
    found = re.search(rb"^m=audio (\d+) ", sdp, re.M)
    assert found is not None, sdp
    return int(found.group(1))


def phone(host: str = LOOPBACK) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(2.0)
    return sock


def heard(sock: socket.socket, wait: float = 0.3) -> bytes | None:
    """The next datagram within `wait`, or None."""
    sock.settimeout(wait)
    try:
        return sock.recv(2048)
    except TimeoutError:
        return None
    finally:
        sock.settimeout(2.0)


def rtp(seq: int, fill: bytes) -> bytes:
    return bytes([0x80, 0, 0, seq]) + seq.to_bytes(4, "big") + b"\x00\x00\x12\x34" + fill * 160


def test_ping(daemon: Daemon) -> None:
    async def test() -> None:
        backend = RtpengineBackend(daemon.media_config())
        started = time.perf_counter()
        await backend.ping()
        assert time.perf_counter() - started < 0.5
        await backend.close()
    asyncio.run(test())


def test_a_call_through_rtpengine(daemon: Daemon) -> None:
    a, b = phone(), phone()

    async def test() -> None:
        backend = RtpengineBackend(daemon.media_config())
        to_b = await backend.offer("call-1", "a", offer_sdp(a.getsockname()[1]))
        to_a = await backend.answer("call-1", "b", offer_sdp(b.getsockname()[1], user="bob"))
        for body, party in ((to_b, a), (to_a, b)):
            text = body.decode()
            assert "candidate" not in text and "ice-ufrag" not in text      # ICE removed
            assert "alice" not in text and "bob" not in text and "Talk" not in text
            assert "127.0.0.2" not in text                                  # origin replaced
            assert f" {party.getsockname()[1]} " not in text
            assert text.startswith("v=0\r\no=- ") and "\r\ns=-\r\n" in text
        b_side, a_side = media_port(to_b), media_port(to_a)
        # RTP both ways, each party hearing only rtpengine's port on its side.
        loop = asyncio.get_running_loop()
        for seq in range(10):
            a.sendto(rtp(seq, b"A"), (LOOPBACK, a_side))
            data, source = await loop.run_in_executor(None, b.recvfrom, 2048)
            assert (data, source) == (rtp(seq, b"A"), (LOOPBACK, b_side))
            b.sendto(rtp(seq, b"B"), (LOOPBACK, b_side))
            data, source = await loop.run_in_executor(None, a.recvfrom, 2048)
            assert (data, source) == (rtp(seq, b"B"), (LOOPBACK, a_side))
        live = await backend.query("call-1")
        assert (live.a.packets_in, live.b.packets_in) == (10, 10)
        assert live.a.bytes_in == 10 * 172 and live.b.packets_out == 10
        # Re-offer from B in the established call (hold), then back.
        held = await backend.offer("call-1", "b", offer_sdp(b.getsockname()[1], "bob",
                                                             "sendonly"))
        assert b"a=sendonly" in held and media_port(held) == a_side
        await backend.answer("call-1", "a", offer_sdp(a.getsockname()[1], direction="recvonly"))
        final = await backend.delete("call-1")
        assert final.packets_relayed == 20
        gone = await backend.delete("call-1")               # BYE and timeout racing: harmless
        assert gone.packets_relayed == 0
        with pytest.raises(RtpengineError, match="Unknown call-id"):
            await backend.query("call-1")
        await backend.close()

    try:
        asyncio.run(test())
    finally:
        a.close()
        b.close()


def test_no_daemon_is_a_typed_error(daemon: Daemon) -> None:
    async def test() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind((LOOPBACK, 0))                          # bound, never answers
        client = await NgClient.connect(HostPort(LOOPBACK, silent.getsockname()[1]),
                                        timeout_s=0.1, attempts=3)
        with pytest.raises(RtpengineError, match="after 3 tries"):
            await client.request("ping")
        assert client.resends == 2
        assert len(silent.recv(100)) > 0                    # it did send
        client.close()
        silent.close()
        refused = RtpengineBackend(MediaConfig(rtpengine=RtpengineConfig(
            ng=HostPort(LOOPBACK, free_port()), timeout_ms=1000)))
        started = time.perf_counter()
        with pytest.raises(MediaError, match="unreachable"):
            await refused.ping()                            # ICMP refused: no 3 s wait
        assert time.perf_counter() - started < 0.9
        await refused.close()
    asyncio.run(test())


def test_media_timeout_watch(daemon: Daemon) -> None:
    """The daemon keeps its own --timeout (60 s): what ends these calls is sipmask's watch
    of rtpengine's "last packet" times with media.timeout_s = 2."""
    a, b = phone(), phone()
    timed_out: list[tuple[str, float]] = []

    async def test() -> None:
        backend = RtpengineBackend(daemon.media_config(timeout_s=2), watch_interval_s=0.2,
                                   on_timeout=lambda c: timed_out.append((c, time.monotonic())))
        calls = {}
        for call_id in ("talking", "held", "dropped"):
            to_b = await backend.offer(call_id, "a", offer_sdp(a.getsockname()[1]))
            await backend.answer(call_id, "b", offer_sdp(b.getsockname()[1], user="bob"))
            calls[call_id] = media_port(to_b)
        # "held": B puts the call on hold; nobody sends anything from here on.
        await backend.offer("held", "b", offer_sdp(b.getsockname()[1], "bob", "sendonly"))
        await backend.answer("held", "a", offer_sdp(a.getsockname()[1], direction="recvonly"))
        # "dropped": rtpengine forgets the call behind our back (as its --timeout would).
        other = await NgClient.connect(daemon.ng, timeout_s=0.5)
        await other.request("delete", **{"call-id": "dropped"})
        other.close()
        # "talking": A sends RTP for 4 s (twice the timeout), then stops.
        started = time.monotonic()
        for seq in range(40):
            a.sendto(rtp(seq, b"A"), (LOOPBACK, calls["talking"]))
            await asyncio.sleep(0.1)
        stopped = time.monotonic()
        assert [c for c, _ in timed_out] == ["dropped"]     # rtpengine's loss, found quickly
        assert timed_out[0][1] - started < 3.5
        deadline = stopped + 6
        while len(timed_out) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert [c for c, _ in timed_out] == ["dropped", "talking"]
        assert 1.0 < timed_out[1][1] - stopped < 4.5         # 2 s after its last packet
        assert backend.watch_queries < 40                    # not a query per tick per call
        await asyncio.sleep(1.0)
        assert len(timed_out) == 2                           # once each; "held" is spared
        for call_id in calls:
            await backend.delete(call_id)
        await backend.close()

    try:
        asyncio.run(test())
    finally:
        a.close()
        b.close()


def test_a_strangers_packet_does_not_capture_the_call_in_strict_mode(daemon: Daemon) -> None:
    """RTP Bleed against rtpengine: one packet to A's port before A's first RTP. Under
    media.latching strict (the default) rtpengine is told not to learn and to drop any
    source but the SDP's address and port, so B's audio still goes to A."""
    a, b, stranger = phone(), phone(), phone(STRANGER)

    async def test() -> None:
        backend = RtpengineBackend(daemon.media_config())
        to_b = await backend.offer("bleed", "a", offer_sdp(a.getsockname()[1]))
        to_a = await backend.answer("bleed", "b", offer_sdp(b.getsockname()[1], user="bob"))
        b_side, a_side = media_port(to_b), media_port(to_a)
        loop = asyncio.get_running_loop()
        stranger.sendto(rtp(0, b"S"), (LOOPBACK, a_side))
        await asyncio.sleep(0.1)
        b.sendto(rtp(1, b"B"), (LOOPBACK, b_side))
        assert await loop.run_in_executor(None, heard, a) == rtp(1, b"B")
        assert await loop.run_in_executor(None, heard, stranger) is None
        assert await loop.run_in_executor(None, heard, b, 0.05) is None   # not injected
        a.sendto(rtp(2, b"A"), (LOOPBACK, a_side))
        assert await loop.run_in_executor(None, heard, b) == rtp(2, b"A")
        await backend.delete("bleed")
        await backend.close()

    try:
        asyncio.run(test())
    finally:
        for sock in (a, b, stranger):
            sock.close()


def test_refused_and_abandoned_first_offers_leave_no_call_in_rtpengine(daemon: Daemon) -> None:
    """An SDP sipmask refuses never reaches rtpengine; a first offer abandoned after it was
    sent (its task cancelled while the reply was awaited, as when a reply is lost) is
    deleted in rtpengine, since the engine deletes only media it was given."""
    async def test() -> None:
        backend = RtpengineBackend(daemon.media_config())
        await backend.ping()                               # connected: the offer sends at once
        many = offer_sdp(4000).replace(b"m=audio", b"m=audio 4002 RTP/AVP 0\r\nm=audio", 1)
        many = many.replace(b"a=rtpmap:0", b"m=audio 4004 RTP/AVP 0\r\n" * 7 + b"a=rtpmap:0", 1)
        with pytest.raises(SdpError):
            await backend.offer("too-many", "a", many)
        with pytest.raises(ParseError):
            await backend.offer("garbage", "a", b"v=1\r\n")
        offer = asyncio.get_running_loop().create_task(
            backend.offer("abandoned", "a", offer_sdp(4000)))
        await asyncio.sleep(0)                             # sent, reply not read yet
        offer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await offer
        deadline = time.monotonic() + 3
        while True:
            try:
                await backend.query("abandoned")
            except RtpengineError as exc:
                assert "Unknown call-id" in str(exc)
                break
            assert time.monotonic() < deadline, "rtpengine still holds the abandoned call"
            await asyncio.sleep(0.05)
        for call_id in ("too-many", "garbage"):
            with pytest.raises(RtpengineError, match="Unknown call-id"):
                await backend.query(call_id)
        await backend.close()
    asyncio.run(test())
