"""The embedded relay on real UDP sockets on 127.0.0.1, under asyncio and uvloop.

Two fake endpoints (A and B) send RTP-shaped packets through a RelaySession. Pinned here:
each receives the other's payload from sipmask's port only; latching under signalled_ip
learns a real source different from the SDP one, and `any` keeps its old relatch rule (the
media.latching modes in full: test_relay_latching.py); the media timeout fires once and not
during hold; counters add up; ports that fail to bind are skipped; exhaustion is typed;
close frees the ports.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from sipmask.clock import FakeClock
from sipmask.config.schema import MediaConfig
from sipmask.errors import MediaError, PortsExhausted
from sipmask.media.embedded import EmbeddedBackend
from sipmask.media.relay import POOL_QUARANTINE_S, Relay, RelaySession, Side, _Stream
from sipmask.sdp.rewrite import MediaEndpoint
from tests.support.media import LOOP_KINDS, Runner, UdpPeer, loop_runner, port_range
from tests.support.paths import REPO

HOST = "127.0.0.1"


def config(pairs: int = 50, latching: str = "strict") -> MediaConfig:
    """Ports in 20000-28999, below the kernel's ephemeral ports."""
    return MediaConfig(address=HOST,
                       ports=port_range(pairs, first=20000, step=40, spread=9000),
                       timeout_s=60, latching=latching)  # type: ignore[arg-type]


def rtp_packet(seq: int, payload: bytes) -> bytes:
    """RFC 3550 §5.1 fixed header (V=2, PT 0 = PCMU) and a payload."""
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, 0x1234) + payload


@pytest.fixture(params=LOOP_KINDS)
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    with loop_runner(request.param) as runner:
        yield runner


def rtp(session: RelaySession, side: Side) -> tuple[str, int]:
    local = session.local(side)
    return local.host, local.rtp


def test_each_party_receives_the_other_from_sipmask_only(run: Runner) -> None:
    async def test() -> None:
        relay = Relay(config(), on_timeout=lambda call_id: None)
        session = await relay.open_session("c1")
        a, b = await UdpPeer.open(), await UdpPeer.open()
        session.set_remote(Side.A, *a.address)
        session.set_remote(Side.B, *b.address)
        for seq in range(5):
            a.send(rtp_packet(seq, b"from-a" * 20), rtp(session, Side.A))
            data, source = await b.recv_from()
            assert data == rtp_packet(seq, b"from-a" * 20)
            assert source == rtp(session, Side.B)       # B sees sipmask's B-side port
            b.send(rtp_packet(seq, b"from-b" * 20), rtp(session, Side.B))
            data, source = await a.recv_from()
            assert data == rtp_packet(seq, b"from-b" * 20)
            assert source == rtp(session, Side.A)       # A sees sipmask's A-side port
        assert a.address[1] not in (source[1], rtp(session, Side.B)[1])
        stats = session.stats()
        assert (stats.a.packets_in, stats.a.packets_out) == (5, 5)
        assert (stats.b.packets_in, stats.b.packets_out) == (5, 5)
        assert stats.a.bytes_in == stats.b.bytes_out == 5 * (12 + 120)
        assert stats.packets_relayed == 10 and stats.a.dropped == stats.b.dropped == 0
        a.close()
        b.close()
        await relay.close()
    run(test)


def test_rtcp_goes_through_its_own_odd_ports(run: Runner) -> None:
    async def test() -> None:
        relay = Relay(config(), on_timeout=lambda call_id: None)
        session = await relay.open_session("c1")
        a_rtp, a_rtcp, b_rtp, b_rtcp = [await UdpPeer.open() for _ in range(4)]
        # RFC 3605 a=rtcp: RTCP at a port that is not RTP + 1.
        session.set_remote(Side.A, HOST, a_rtp.address[1], a_rtcp.address[1])
        session.set_remote(Side.B, HOST, b_rtp.address[1], b_rtcp.address[1])
        local_a, local_b = session.local(Side.A), session.local(Side.B)
        assert local_a.rtp % 2 == 0 and local_a.rtcp == local_a.rtp + 1
        assert local_b.rtp % 2 == 0 and local_b.rtcp == local_b.rtp + 1
        sender_report = bytes((0x80, 200, 0, 6)) + bytes(range(24))
        a_rtcp.send(sender_report, (HOST, local_a.rtcp))
        data, source = await b_rtcp.recv_from()
        assert (data, source) == (sender_report, (HOST, local_b.rtcp))
        assert await b_rtp.nothing()
        # SDES identity is replaced by the call side's pseudonym (media/rtcp.py), and what
        # does not parse as RTCP is not relayed at all.
        cname = b"13800000001@192.168.1.20"
        chunk = b"\x00\x00\x00\x01" + bytes((1, len(cname))) + cname + b"\x00\x00"
        sdes = bytes((0x81, 202, 0, len(chunk) // 4)) + chunk
        a_rtcp.send(sender_report + sdes, (HOST, local_a.rtcp))
        data = await b_rtcp.recv()
        assert data.startswith(sender_report) and b"13800000001" not in data
        assert b"192.168" not in data and len(data) > len(sender_report)
        a_rtcp.send(b"\x81\xc8rtcp-sr", (HOST, local_a.rtcp))
        assert await b_rtcp.nothing()
        assert session.leg_stats(Side.A).rtcp_dropped == 1
        for endpoint in (a_rtp, a_rtcp, b_rtp, b_rtcp):
            endpoint.close()
        await relay.close()
    run(test)


def test_latching_learns_the_real_source_behind_nat(run: Runner) -> None:
    async def test() -> None:
        relay = Relay(config(latching="signalled_ip"), on_timeout=lambda call_id: None)
        session = await relay.open_session("c1")
        sdp_a, real_a, b = await UdpPeer.open(), await UdpPeer.open(), await UdpPeer.open()
        # A's SDP names one address; A really sends from another (a NAT rewrote it).
        session.set_remote(Side.A, *sdp_a.address)
        session.set_remote(Side.B, *b.address)
        b.send(b"early", rtp(session, Side.B))
        assert await sdp_a.recv() == b"early"           # before A speaks: the SDP address
        real_a.send(b"hello", rtp(session, Side.A))
        assert await b.recv() == b"hello"
        assert session.peer(Side.A) == real_a.address    # latched
        b.send(b"after", rtp(session, Side.B))
        assert await real_a.recv_from() == (b"after", rtp(session, Side.A))
        assert await sdp_a.nothing()
        for endpoint in (sdp_a, real_a, b):
            endpoint.close()
        await relay.close()
    run(test)


def test_under_any_another_source_takes_over_once_the_latched_one_goes_silent(
        run: Runner) -> None:
    async def test() -> None:
        clock = FakeClock()
        relay = Relay(config(latching="any"), on_timeout=lambda call_id: None,
                      clock=clock.monotonic, relatch_after_s=2.0, sweep=False)
        session = await relay.open_session("c1")
        a, b, stranger = (await UdpPeer.open(), await UdpPeer.open(),
                          await UdpPeer.open())
        session.set_remote(Side.A, *a.address)
        session.set_remote(Side.B, *b.address)
        a.send(b"a1", rtp(session, Side.A))
        assert await b.recv() == b"a1"
        clock.advance(1.0)
        stranger.send(b"inject", rtp(session, Side.A))
        assert await b.nothing()                          # not relayed
        b.send(b"b1", rtp(session, Side.B))
        assert await a.recv() == b"b1"                    # A keeps its media
        assert await stranger.nothing(0.05)
        assert session.stats().a.rejected == 1
        # A silent for the re-latch time: the new source takes over (phone moved network).
        clock.advance(2.5)
        stranger.send(b"moved", rtp(session, Side.A))
        assert await b.recv() == b"moved"
        assert session.peer(Side.A) == stranger.address
        # And now the old source is the stranger.
        a.send(b"old", rtp(session, Side.A))
        assert await b.nothing()
        for endpoint in (a, b, stranger):
            endpoint.close()
        await relay.close()
    run(test)


def test_a_new_sdp_address_clears_the_latch(run: Runner) -> None:
    async def test() -> None:
        relay = Relay(config(), on_timeout=lambda call_id: None)
        session = await relay.open_session("c1")
        a, a2, b = await UdpPeer.open(), await UdpPeer.open(), await UdpPeer.open()
        session.set_remote(Side.A, *a.address)
        session.set_remote(Side.B, *b.address)
        a.send(b"x", rtp(session, Side.A))
        await b.recv()
        session.set_remote(Side.B, *b.address)            # same SDP again: latch kept
        session.set_remote(Side.A, *a2.address)           # re-INVITE moved A's media
        b.send(b"to-new", rtp(session, Side.B))
        assert await a2.recv() == b"to-new"
        a2.send(b"from-new", rtp(session, Side.A))        # no 2 s wait: the latch was reset
        assert await b.recv() == b"from-new"
        session.set_remote(Side.A, "0.0.0.0", a2.address[1])   # RFC 3264 §8.4 hold form
        b.send(b"held", rtp(session, Side.B))
        assert await a2.nothing()
        for endpoint in (a, a2, b):
            endpoint.close()
        await relay.close()
    run(test)


def test_packets_with_nowhere_to_go_are_counted_as_dropped(run: Runner) -> None:
    async def test() -> None:
        relay = Relay(config(), on_timeout=lambda call_id: None)
        session = await relay.open_session("c1")
        a, b = await UdpPeer.open(), await UdpPeer.open()
        session.set_remote(Side.A, *a.address)            # B's answer not seen yet
        for _ in range(3):
            a.send(b"early", rtp(session, Side.A))
        await asyncio.sleep(0.1)
        stats = session.stats()
        assert (stats.a.packets_in, stats.a.dropped, stats.b.packets_out) == (3, 3, 0)
        # B's SDP arrives: A's packets have somewhere to go.
        session.set_remote(Side.B, *b.address)
        a.send(b"now", rtp(session, Side.A))
        assert await b.recv() == b"now"
        assert relay.stats().dropped == 3
        a.close()
        b.close()
        await relay.close()
    run(test)


def test_media_timeout_fires_once_and_not_on_hold(run: Runner) -> None:
    async def test() -> None:
        fired: list[str] = []
        relay = Relay(config(), on_timeout=fired.append, timeout_s=0.4, sweep_interval_s=0.05)
        await relay.start()
        talking = await relay.open_session("talking")
        held = await relay.open_session("held")
        a, b = await UdpPeer.open(), await UdpPeer.open()
        for session in (talking, held):
            session.set_remote(Side.A, *a.address)
            session.set_remote(Side.B, *b.address)
        held.set_hold(True)
        for _ in range(6):                                # 0.6 s of RTP on "talking"
            a.send(b"rtp", rtp(talking, Side.A))
            await asyncio.sleep(0.1)
        assert fired == []
        await asyncio.sleep(0.7)                          # then silence
        assert fired == ["talking"]
        held.set_hold(False)                              # the count starts now
        await asyncio.sleep(0.2)
        assert fired == ["talking"]
        await asyncio.sleep(0.5)
        assert fired == ["talking", "held"]
        await asyncio.sleep(0.3)
        assert fired == ["talking", "held"]               # once each
        assert talking.stats().timed_out and relay.stats().timeouts == 2
        a.close()
        b.close()
        await relay.close()
    run(test)


def test_timeout_waits_for_both_sdp_addresses_on_a_fake_clock(run: Runner) -> None:
    async def test() -> None:
        clock = FakeClock()
        fired: list[str] = []
        relay = Relay(config(), on_timeout=fired.append, clock=clock.monotonic, timeout_s=5,
                      sweep=False)
        session = await relay.open_session("ringing")
        session.set_remote(Side.A, HOST, 40000)
        clock.advance(60)                                 # a long ring, no answer yet
        assert relay.check_timeouts() == []
        session.set_remote(Side.B, HOST, 40002)
        clock.advance(4.9)
        assert relay.check_timeouts() == []
        clock.advance(0.2)
        assert relay.check_timeouts() == ["ringing"] and fired == ["ringing"]
        await relay.close()
    run(test)


def test_busy_ports_are_skipped_and_exhaustion_is_typed(run: Runner) -> None:
    async def test() -> None:
        cfg = config(pairs=3)
        relay = Relay(cfg, on_timeout=lambda call_id: None)
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind((HOST, cfg.ports.first + 1))        # RTCP port of the first pair
        try:
            session = await relay.open_session("c1")
            used = {session.local(side).rtp for side in Side}
            assert used == {cfg.ports.first + 2, cfg.ports.first + 4}
            assert relay.allocator.skipped == 1
            with pytest.raises(PortsExhausted):
                await relay.open_session("c2")
            assert relay.session("c2") is None and relay.allocator.in_use == 2
        finally:
            squatter.close()
        with pytest.raises(MediaError, match="already open"):
            await relay.open_session("c1")
        relay.close_session("c1")
        await asyncio.sleep(0)                            # transports close on the next turn
        session = await relay.open_session("c3")         # the squatter left: all bindable
        assert relay.stats().active_sessions == 1
        await relay.close()
    run(test)


def test_close_pools_the_sockets_and_relay_close_frees_the_ports(run: Runner) -> None:
    async def test() -> None:
        cfg = config(pairs=2)
        relay = Relay(cfg, on_timeout=lambda call_id: None)
        session = await relay.open_session("c1")
        a, b = await UdpPeer.open(), await UdpPeer.open()
        session.set_remote(Side.A, *a.address)
        session.set_remote(Side.B, *b.address)
        for _ in range(4):
            a.send(b"p" * 172, rtp(session, Side.A))
            await b.recv()
        ports = [session.local(side) for side in Side]
        final = relay.close_session("c1")
        assert final is not None and final.packets_relayed == 4
        assert relay.close_session("c1") is None
        stats = relay.stats()
        assert (stats.active_sessions, stats.sessions_opened, stats.ports_in_use,
                stats.ports_idle) == (0, 1, 0, 4)
        assert (stats.packets_relayed, stats.bytes_relayed) == (4, 4 * 172)
        a.send(b"late", (HOST, ports[0].rtp))        # to a pooled socket
        assert await b.nothing()                                  # goes nowhere
        await relay.close()
        for local in ports:                               # the OS has the ports back
            for port in (local.rtp, local.rtcp):
                probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                probe.bind((HOST, port))
                probe.close()
        assert relay.stats().ports_idle == 0
        a.close()
        b.close()
    run(test)


def test_pooled_pairs_are_reused_fresh_after_their_quarantine(run: Runner) -> None:
    async def test() -> None:
        clock = FakeClock()
        relay = Relay(config(pairs=4), on_timeout=lambda call_id: None,
                      clock=clock.monotonic, sweep=False)
        first = await relay.open_session("c1")
        a, b = await UdpPeer.open(), await UdpPeer.open()
        first.set_remote(Side.A, *a.address)
        first.set_remote(Side.B, *b.address)
        a.send(b"x", rtp(first, Side.A))
        await b.recv()
        used = {first.local(side).rtp for side in Side}
        relay.close_session("c1")
        second = await relay.open_session("c2")           # in quarantine: fresh ports
        assert not used & {second.local(side).rtp for side in Side}
        assert relay.pool_reused == 0
        clock.advance(POOL_QUARANTINE_S)
        third = await relay.open_session("c3")            # quarantine over: c1's pairs
        assert {third.local(side).rtp for side in Side} == used
        assert relay.pool_reused == 2
        stats = third.stats()
        assert (stats.packets_relayed, stats.a.packets_in, stats.b.packets_out) == (0, 0, 0)
        # A reused socket starts with no latch: c1's party is not c3's peer.
        a.send(b"stale", rtp(third, Side.A))
        assert await b.nothing()
        c, d = await UdpPeer.open(), await UdpPeer.open()
        third.set_remote(Side.A, *c.address)
        third.set_remote(Side.B, *d.address)
        c.send(b"fresh", rtp(third, Side.A))
        data, source = await d.recv_from()
        assert data == b"fresh" and source == rtp(third, Side.B)
        # Out of fresh pairs, a pooled one still beats refusing the call.
        relay.close_session("c2")
        await relay.open_session("c4")
        assert relay.pool_reused == 4
        for endpoint in (a, b, c, d):
            endpoint.close()
        await relay.close()
    run(test)


# Run in a child process: the open-files limit is the whole process's, and the event
# loop's own teardown needs descriptors too.
_OUT_OF_FDS = """
import asyncio, json, os, resource, sys
from sipmask.clock import FakeClock
from sipmask.errors import MediaError
from sipmask.config.schema import MediaConfig
from sipmask.media.relay import Relay
from tests.support.media import port_range

async def main():
    clock = FakeClock()
    ports = port_range(8, first=27000, step=32, spread=900)
    relay = Relay(MediaConfig(address="127.0.0.1", ports=ports, timeout_s=60),
                  on_timeout=lambda call_id: None, clock=clock.monotonic, sweep=False)
    await relay.open_session("c1")
    relay.close_session("c1")                   # its two pairs pooled, in quarantine
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")), hard))
    out = {}
    try:
        await relay.open_session("c2")
        out["c2"] = "opened"
    except MediaError as exc:
        out["c2"] = str(exc)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    out["reused"] = relay.pool_reused
    await relay.close()
    out["in_use"] = relay.allocator.in_use
    return out

print(json.dumps(asyncio.run(main())), flush=True)
"""


def test_out_of_file_descriptors_a_pooled_pair_beats_refusing_the_call() -> None:
    """At the process's open-files limit (EMFILE on socket()), a call whose fresh pair
    cannot be made takes a pooled one still in quarantine, as when the port range runs
    out, instead of being refused; no pair is left allocated."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _OUT_OF_FDS], capture_output=True,
                          text=True, timeout=60, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["c2"] == "opened", result
    assert result["reused"] >= 1 and result["in_use"] == 0, result


def test_counters_add_up_under_a_burst(run: Runner) -> None:
    async def test() -> None:
        relay = Relay(config(), on_timeout=lambda call_id: None)
        sessions = [await relay.open_session(f"c{i}") for i in range(10)]
        a, b = await UdpPeer.open(), await UdpPeer.open()
        for session in sessions:
            session.set_remote(Side.A, *a.address)
            session.set_remote(Side.B, *b.address)
        sent = 0
        for seq in range(20):
            for session in sessions:
                a.send(rtp_packet(seq, b"\xff" * 160), rtp(session, Side.A))
                b.send(rtp_packet(seq, b"\x7f" * 160), rtp(session, Side.B))
                sent += 2
            await asyncio.sleep(0.01)
        got: list[Any] = []
        for endpoint in (a, b):
            while len(got) < sent:
                try:
                    got.append(await endpoint.recv(0.3))
                except TimeoutError:
                    break
        assert len(got) == sent
        stats = relay.stats()
        assert stats.packets_relayed == sent and stats.bytes_relayed == sent * 172
        assert sum(s.stats().a.packets_in + s.stats().b.packets_in for s in sessions) == sent
        a.close()
        b.close()
        await relay.close()
    run(test)


# -- EmbeddedBackend: the rtpengine-shaped adapter over the relay --------------------------

def sdp_body(host: str, *ports: int, direction: str = "sendrecv") -> bytes:
    media = "".join(f"m=audio {port} RTP/AVP 0\r\na={direction}\r\n" for port in ports)
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"{media}").encode()


def parse_endpoints(sdp: bytes) -> list[MediaEndpoint | None]:
    """The lambda-sized stand-in for sipmask.sdp: c= host and each m= port."""
    lines = sdp.decode().split("\r\n")
    host = next(line[9:] for line in lines if line.startswith("c=IN IP4 "))
    ports = [int(line.split()[1]) for line in lines if line.startswith("m=")]
    return [MediaEndpoint(host, port) if port else None for port in ports]


def where(endpoint: MediaEndpoint | None) -> tuple[str, int]:
    assert endpoint is not None
    return endpoint.host, endpoint.port


def test_embedded_offer_answer_points_each_leg_at_its_own_side(run: Runner) -> None:
    async def test() -> None:
        rewrites: list[tuple[str, list[int], str]] = []

        def rewrite(sdp: bytes, address: str, ports: list[int], leg_key: str) -> bytes:
            rewrites.append((address, ports, leg_key))
            return sdp_body(address, *ports)

        backend = EmbeddedBackend(config(), on_timeout=lambda call_id: None,
                                  parse_endpoints=parse_endpoints, rewrite=rewrite,
                                  is_hold=lambda sdp: b"a=sendonly" in sdp)
        a, b = await UdpPeer.open(), await UdpPeer.open()
        to_b = await backend.offer("c1", "a", sdp_body(HOST, a.address[1]))
        session = backend.relay.session("c1")
        assert session is not None
        b_side = session.local(Side.B).rtp
        assert rewrites[-1] == (HOST, [b_side], "c1:b")
        assert parse_endpoints(to_b) == [MediaEndpoint(HOST, b_side)]
        to_a = await backend.answer("c1", "b", sdp_body(HOST, b.address[1]))
        assert parse_endpoints(to_a) == [MediaEndpoint(HOST, session.local(Side.A).rtp)]
        assert rewrites[-1][2] == "c1:a"
        # Media follows the rewritten bodies: each party sends where its SDP said.
        a.send(b"voice-a", where(parse_endpoints(to_a)[0]))
        assert await b.recv_from() == (b"voice-a", (HOST, b_side))
        b.send(b"voice-b", where(parse_endpoints(to_b)[0]))
        assert await a.recv() == b"voice-b"
        # Re-INVITE from B putting the call on hold suspends the media timeout.
        await backend.offer("c1", "b", sdp_body(HOST, b.address[1], direction="sendonly"))
        assert session.held
        await backend.answer("c1", "a", sdp_body(HOST, a.address[1]))
        assert session.held                                # B still holds
        await backend.offer("c1", "b", sdp_body(HOST, b.address[1]))
        assert not session.held
        final = await backend.delete("c1")
        assert (final.a.packets_in, final.b.packets_out, final.b.packets_in) == (1, 1, 1)
        assert backend.relay.session("c1") is None
        again = await backend.delete("c1")                 # BYE and timeout racing: no error
        assert again.packets_relayed == 0
        with pytest.raises(MediaError, match="without an offer"):
            await backend.answer("c2", "b", sdp_body(HOST, 4000))
        a.close()
        b.close()
        await backend.close()
    run(test)


def test_embedded_relays_each_enabled_media_line(run: Runner) -> None:
    async def test() -> None:
        backend = EmbeddedBackend(config(), on_timeout=lambda call_id: None,
                                  parse_endpoints=parse_endpoints,
                                  rewrite=lambda sdp, address, ports, key: sdp_body(address,
                                                                                    *ports))
        a1, a2, b1, b2 = [await UdpPeer.open() for _ in range(4)]
        # Audio, a rejected stream (port 0), and video: two relay media lines.
        offer = sdp_body(HOST, a1.address[1], 0, a2.address[1])
        to_b = parse_endpoints(await backend.offer("c1", "a", offer))
        assert len(to_b) == 2 and to_b[0] != to_b[1]
        to_a = parse_endpoints(await backend.answer("c1", "b", sdp_body(
            HOST, b1.address[1], 0, b2.address[1])))
        session = backend.relay.session("c1")
        assert session is not None and session.media_count == 2
        a2.send(b"video", where(to_a[1]))
        assert await b2.recv() == b"video"
        assert await b1.nothing()
        for endpoint in (a1, a2, b1, b2):
            endpoint.close()
        await backend.close()
        assert backend.relay.allocator.in_use == 0
    run(test)


def test_embedded_defaults_to_the_sipmask_sdp_rewrite(run: Runner) -> None:
    async def test() -> None:
        backend = EmbeddedBackend(config(), on_timeout=lambda call_id: None)
        a, b = await UdpPeer.open(), await UdpPeer.open()
        offer = (f"v=0\r\no=alice 2890844526 2890844526 IN IP4 {HOST}\r\ns=call\r\n"
                 f"c=IN IP4 {HOST}\r\nt=0 0\r\nm=audio {a.address[1]} RTP/AVP 0\r\n"
                 "a=rtpmap:0 PCMU/8000\r\n").encode()
        to_b = await backend.offer("c1", "a", offer)
        session = backend.relay.session("c1")
        assert session is not None
        assert f"m=audio {session.local(Side.B).rtp} RTP/AVP 0".encode() in to_b
        # A's port as a whole number: the random o= sess-id may hold its digits.
        assert not re.search(rb"(?<![0-9])%d(?![0-9])" % a.address[1], to_b)
        assert b"alice" not in to_b
        answer = offer.replace(str(a.address[1]).encode(), str(b.address[1]).encode())
        to_a = await backend.answer("c1", "b", answer)
        assert f"m=audio {session.local(Side.A).rtp} ".encode() in to_a
        a.send(b"pcmu", (HOST, session.local(Side.A).rtp))
        assert await b.recv() == b"pcmu"
        await backend.close()
        a.close()
        b.close()
    run(test)


def test_a_closed_session_is_freed_by_reference_counting(run: Runner) -> None:
    """serve's GcFreezer hides long-lived objects from the cycle collector, so a call's
    streams must not form a cycle that outlives it (the twins point at each other)."""
    async def test() -> None:
        relay = Relay(config(), on_timeout=lambda call_id: None)
        gc.collect()
        gc.disable()
        try:
            session = await relay.open_session("c1")
            await relay.add_media(session)
            a, b = await UdpPeer.open(), await UdpPeer.open()
            session.set_remote(Side.A, *a.address)
            session.set_remote(Side.B, *b.address)
            a.send(b"hello", rtp(session, Side.A))
            assert await b.recv() == b"hello"
            assert sum(isinstance(o, _Stream) for o in gc.get_objects()) == 8
            relay.close_session("c1")
            del session
            # Pooled for reuse, unlinked: nothing but the pool holds them.
            assert sum(isinstance(o, _Stream) and o.twin is None
                       for o in gc.get_objects()) == 8
            await relay.close()
            await asyncio.sleep(0.05)        # transports let go on the loop's next turns
            assert sum(isinstance(o, _Stream) for o in gc.get_objects()) == 0
            a.close()
            b.close()
        finally:
            gc.enable()
    run(test)
