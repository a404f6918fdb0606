"""EmbeddedBackend with the real sipmask.sdp path and a real relay on loopback sockets.

Pinned here:
- an offer is read and checked whole before anything is opened: 1,000 refused offers (layered
  ports, 600 m= lines, more m= lines than MAX_MEDIA_LINES, a bad port, garbage, no c=, a
  non-IN network, a host name that does not resolve) leave no port in use and no session,
  and the next call still gets ports;
- whoever opens releases on every path: a first offer whose second m= line finds no ports
  closes the session it opened; a re-offer adding m= lines that runs out of ports gives
  back the lines it added and the call goes on as before;
- host names in c= are resolved once per offer through the injected resolver (off the
  packet path), with a deadline: a resolver that never answers gives 488 in time;
- SRTCP on RTP/SAVP(F) media is dropped (its CNAME cannot be scrubbed), SRTP and DTLS pass
  unchanged; plain RTCP on RTP/AVP still passes, scrubbed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sipmask.config.schema import MediaConfig
from sipmask.errors import MediaError, SipError
from sipmask.media.backend import MAX_MEDIA_LINES
from sipmask.media.embedded import MAX_LOOKUPS, EmbeddedBackend
from sipmask.media.relay import Side
from tests.support.media import LOOP_KINDS, Runner, UdpPeer, close_after, loop_runner, port_range

RELAY, A_IP, B_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"


@pytest.fixture(params=LOOP_KINDS)
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    with loop_runner(request.param) as runner:
        yield runner


def config(pairs: int) -> MediaConfig:
    """A range of its own (31000-31999), below the kernel's ephemeral ports."""
    return MediaConfig(address=RELAY,
                       ports=port_range(pairs, first=31000, step=16, spread=600),
                       timeout_s=60)


def backend_for(pairs: int = 8, **options: Any) -> EmbeddedBackend:
    return close_after(EmbeddedBackend(config(pairs), on_timeout=lambda call_id: None,
                                       **options))


def sdp(host: str, *ports: int, proto: str = "RTP/AVP", extra: str = "") -> bytes:
    media = "".join(f"m=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n{extra}"
                    for port in ports)
    return (f"v=0\r\no=- 1 1 IN IP4 {A_IP}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"{media}").encode()


REFUSED: list[tuple[str, bytes, int]] = [
    ("layered ports", sdp(A_IP, 4000).replace(b"4000 RTP", b"4000/2 RTP"), 488),
    ("600 m= lines", sdp(A_IP, *range(4000, 5200, 2)), 488),
    ("one m= line too many", sdp(A_IP, *range(4000, 4002 + 2 * MAX_MEDIA_LINES, 2)), 488),
    ("bad port", sdp(A_IP, 4000).replace(b"4000", b"99999"), 400),
    ("garbage", b"\x00\xffnot an SDP at all", 400),
    ("no c=", sdp(A_IP, 4000).replace(b"c=IN IP4 127.0.0.2\r\n", b""), 488),
    ("not IN", sdp(A_IP, 4000).replace(b"c=IN", b"c=ATM"), 488),
]


async def unresolvable(host: str) -> str:
    raise OSError(f"{host}: Name or service not known")


def test_a_thousand_refused_offers_leave_no_port_in_use(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for(pairs=100, resolve=unresolvable)
        kinds = [*REFUSED, ("host name that does not resolve", sdp("gone.test", 4000), 488)]
        for n in range(1000):
            name, body, status = kinds[n % len(kinds)]
            with pytest.raises(SipError) as refused:
                await backend.offer(f"refused-{n}", "a", body)
            assert refused.value.status == status, name
        stats = backend.relay.stats()
        assert (stats.ports_in_use, stats.active_sessions, stats.sessions_opened,
                stats.ports_idle) == (0, 0, 0, 0)
        # The next call still gets ports, and its media flows.
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        to_b = await backend.offer("good", "a", sdp(A_IP, a.port))
        to_a = await backend.answer("good", "b", sdp(B_IP, b.port))
        session = backend.relay.session("good")
        assert session is not None
        assert f"m=audio {session.local(Side.B).rtp} ".encode() in to_b
        a.send(b"\x80\x00voice", (RELAY, session.local(Side.A).rtp))
        assert await b.recv() == b"\x80\x00voice"
        assert f"m=audio {session.local(Side.A).rtp} ".encode() in to_a
        await backend.delete("good")
        assert backend.relay.stats().ports_in_use == 0
    run(test)


def test_a_first_offer_that_runs_out_of_ports_closes_what_it_opened(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for(pairs=3)          # line 1 takes 2 pairs; line 2 cannot have 2
        with pytest.raises(MediaError):
            await backend.offer("c1", "a", sdp(A_IP, 4000, 4002))
        assert backend.relay.session("c1") is None
        assert backend.relay.stats().ports_in_use == 0
        await backend.offer("c2", "a", sdp(A_IP, 4000))      # the ports are there for the next
        assert backend.relay.stats().ports_in_use == 4
    run(test)


def test_a_reoffer_adding_lines_that_fails_gives_back_what_it_added(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for(pairs=4)          # line 1: 2 pairs; line 2: 2; line 3: none
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await backend.offer("c1", "a", sdp(A_IP, a.port))
        await backend.answer("c1", "b", sdp(B_IP, b.port))
        session = backend.relay.session("c1")
        assert session is not None and backend.relay.stats().ports_in_use == 4
        with pytest.raises(MediaError):
            await backend.offer("c1", "b", sdp(B_IP, b.port, 5002, 5004))
        assert session.media_count == 1
        assert backend.relay.stats().ports_in_use == 4
        assert session.peer(Side.B) == (B_IP, b.port)       # the failed offer changed nothing
        a.send(b"\x80\x00still", (RELAY, session.local(Side.A).rtp))
        assert await b.recv() == b"\x80\x00still"
    run(test)


def test_host_names_are_resolved_once_per_offer_not_per_packet(run: Runner) -> None:
    async def test() -> None:
        asked: list[str] = []
        names = {"phone-a.test": A_IP, "phone-b.test": B_IP}

        async def resolve(host: str) -> str:
            asked.append(host)
            return names[host]

        backend = backend_for(resolve=resolve)
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        await backend.offer("c1", "a", sdp("phone-a.test", a.port))
        await backend.answer("c1", "b", sdp("phone-b.test", b.port))
        session = backend.relay.session("c1")
        assert session is not None
        assert session.peer(Side.A) == (A_IP, a.port) and session.peer(Side.B) == (B_IP, b.port)
        for seq in range(50):
            a.send(bytes((0x80, 0, 0, seq)), (RELAY, session.local(Side.A).rtp))
            assert await b.recv() == bytes((0x80, 0, 0, seq))
            b.send(bytes((0x80, 0, 1, seq)), (RELAY, session.local(Side.B).rtp))
            assert await a.recv() == bytes((0x80, 0, 1, seq))
        assert asked == ["phone-a.test", "phone-b.test"]
    run(test)


def test_the_default_resolver_leaves_an_ip_on_the_packet_path(run: Runner) -> None:
    """`localhost` comes from /etc/hosts, no DNS query. Before the fix the peer kept the
    name, and every sendto resolved it again."""
    async def test() -> None:
        backend = backend_for()
        a, b = await UdpPeer.open(RELAY), await UdpPeer.open(B_IP)
        await backend.offer("c1", "a", sdp("localhost", a.port))
        await backend.answer("c1", "b", sdp(B_IP, b.port))
        session = backend.relay.session("c1")
        assert session is not None and session.peer(Side.A) == (RELAY, a.port)
        b.send(b"\x80\x00hello", (RELAY, session.local(Side.B).rtp))
        assert await a.recv() == b"\x80\x00hello"
    run(test)


def test_a_resolver_that_never_answers_gives_488_by_the_deadline(run: Runner) -> None:
    async def test() -> None:
        async def never(host: str) -> str:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        backend = backend_for(resolve=never, resolve_timeout_s=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(SipError) as refused:
            await backend.offer("c1", "a", sdp("slow.test", 4000))
        assert refused.value.status == 488
        # At the deadline (uvloop's timers may fire a millisecond early), not hanging.
        assert 0.19 <= loop.time() - started < 1.5
        assert "slow.test" not in str(refused.value)            # a name may hold a number
        assert backend.relay.session("c1") is None
        assert backend.relay.stats().ports_in_use == 0
    run(test)


def test_lookups_past_their_deadline_hold_at_most_max_lookups_threads(run: Runner) -> None:
    """A lookup cannot be stopped once it runs (getaddrinfo in a thread), so one past its
    deadline keeps its place: a stalled resolver never has more than MAX_LOOKUPS running,
    and the offers beyond them get 488 by their own deadline."""
    async def test() -> None:
        started: list[str] = []
        release = asyncio.Event()

        async def stalled(host: str) -> str:
            started.append(host)
            await release.wait()
            return A_IP

        backend = backend_for(resolve=stalled, resolve_timeout_s=0.05)
        for n in range(3 * MAX_LOOKUPS):
            with pytest.raises(SipError) as refused:
                await backend.offer(f"c{n}", "a", sdp(f"slow-{n}.test", 4000))
            assert refused.value.status == 488
        assert len(started) == MAX_LOOKUPS
        release.set()                                  # the resolver recovers
        await asyncio.sleep(0.01)
        await backend.offer("after", "a", sdp("fine.test", 4000))
        assert started[-1] == "fine.test"
        assert backend.relay.stats().ports_in_use == 4
    run(test)


SRTP = bytes((0x80, 0)) + bytes(10) + bytes(range(40))          # header, then ciphertext
SRTCP = bytes((0x80, 200, 0, 6)) + bytes(24) + bytes((0x80, 0, 0, 1)) + bytes(10)
DTLS = bytes((22, 0xFE, 0xFD)) + bytes(10) + b"handshake"      # RFC 7983 §7: 20..63


@pytest.mark.parametrize("proto", ["RTP/SAVP", "UDP/TLS/RTP/SAVPF"])
def test_srtcp_is_dropped_and_srtp_and_dtls_pass_unchanged(run: Runner, proto: str) -> None:
    async def test() -> None:
        backend = backend_for()
        a, a_rtcp, b, b_rtcp = (await UdpPeer.open(A_IP), await UdpPeer.open(A_IP),
                                await UdpPeer.open(B_IP), await UdpPeer.open(B_IP))
        crypto = ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 "
                  "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n")
        await backend.offer("c1", "a", sdp(A_IP, a.port, proto=proto,
                                           extra=f"a=rtcp:{a_rtcp.port}\r\n{crypto}"))
        await backend.answer("c1", "b", sdp(B_IP, b.port, proto=proto,
                                            extra=f"a=rtcp:{b_rtcp.port}\r\n{crypto}"))
        session = backend.relay.session("c1")
        assert session is not None
        ports = session.local(Side.A)
        a.send(SRTP, (RELAY, ports.rtp))
        assert await b.recv() == SRTP                            # SRTP: as it came
        a_rtcp.send(SRTCP, (RELAY, ports.rtcp))                  # SRTCP on its own port
        a.send(SRTCP, (RELAY, ports.rtp))                        # and muxed on the RTP port
        assert await b_rtcp.nothing() and await b.nothing(0.01)
        a_rtcp.send(DTLS, (RELAY, ports.rtcp))                   # DTLS-SRTP keying for RTCP
        assert await b_rtcp.recv() == DTLS
        assert session.stats().a.rtcp_dropped == 2
    run(test)


def test_plain_rtcp_on_avp_still_passes(run: Runner) -> None:
    async def test() -> None:
        backend = backend_for()
        a, a_rtcp, b, b_rtcp = (await UdpPeer.open(A_IP), await UdpPeer.open(A_IP),
                                await UdpPeer.open(B_IP), await UdpPeer.open(B_IP))
        await backend.offer("c1", "a", sdp(A_IP, a.port, extra=f"a=rtcp:{a_rtcp.port}\r\n"))
        await backend.answer("c1", "b", sdp(B_IP, b.port, extra=f"a=rtcp:{b_rtcp.port}\r\n"))
        session = backend.relay.session("c1")
        assert session is not None
        report = SRTCP[:28]
        a_rtcp.send(report, (RELAY, session.local(Side.A).rtcp))
        assert await b_rtcp.recv() == report
        assert session.stats().a.rtcp_dropped == 0
    run(test)
