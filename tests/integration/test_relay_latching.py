"""Who may send a call's media (RTP Bleed), on real UDP sockets on loopback.

The relay listens on 127.0.0.1; A's phone is on 127.0.0.2, B's on 127.0.0.3, A's SIP
signalling comes from 127.0.0.4 (a NAT's public side) and a stranger sits on 127.0.0.5.
Pinned per `media.latching`:
- strict: only the exact address and port each SDP names is heard, for RTP and RTCP; a
  stranger's packet before A's first RTP gets nothing of B's audio, and a spray over the
  whole port range from another IP takes neither side; the SDP's IP on another port is
  refused too;
- signalled_ip: the first packet from the SDP's IP or the leg's SIP source IP (any port)
  latches; another port on that IP takes over only after the latched one was silent for
  relatch_after_s; no other IP ever does, silent or not;
- any: the old first-come rule (unsafe, kept for reference);
- a re-INVITE naming a new address moves what is heard (it is signalled);
- strangers are counted and reach sipmask_relay_dropped_total{reason="stranger"}.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sipmask.clock import FakeClock
from sipmask.config.schema import MediaConfig
from sipmask.media.relay import Relay, RelaySession, Side
from sipmask.observability.metrics import Metrics, Sources
from tests.support.media import LOOP_KINDS, Runner, UdpPeer, close_after, loop_runner, port_range

RELAY, A_IP, B_IP, NAT_IP, STRANGER_IP = (f"127.0.0.{n}" for n in range(1, 6))
Latching = str


def config(latching: Latching, pairs: int = 8) -> MediaConfig:
    """A range apart from test_relay.py's, below the kernel's ephemeral ports."""
    return MediaConfig(address=RELAY,
                       ports=port_range(pairs, first=29000, step=32, spread=900),
                       timeout_s=60, latching=latching)  # type: ignore[arg-type]


@pytest.fixture(params=LOOP_KINDS)
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    with loop_runner(request.param) as runner:
        yield runner


def relay_for(latching: Latching, pairs: int = 8, **options: Any) -> Relay:
    return close_after(Relay(config(latching, pairs), on_timeout=lambda call_id: None,
                             **options))


def rtp_of(session: RelaySession, side: Side) -> tuple[str, int]:
    local = session.local(side)
    return local.host, local.rtp


def rtcp_of(session: RelaySession, side: Side) -> tuple[str, int]:
    local = session.local(side)
    return local.host, local.rtcp


RTP = bytes((0x80, 0, 0, 1)) + bytes(8) + b"voice" * 32          # RFC 3550 §5.1, PT 0
SENDER_REPORT = bytes((0x80, 200, 0, 6)) + bytes(24)              # RFC 3550 §6.4.1


async def talk(a: UdpPeer, b: UdpPeer, session: RelaySession) -> None:
    """Each party hears the other; raises if either does not."""
    a.send(RTP + b"a", rtp_of(session, Side.A))
    assert await b.recv() == RTP + b"a"
    b.send(RTP + b"b", rtp_of(session, Side.B))
    assert await a.recv() == RTP + b"b"


def test_a_strangers_packet_before_a_speaks_gets_none_of_bs_audio(run: Runner) -> None:
    async def test() -> None:
        relay = relay_for("strict")
        session = await relay.open_session("c1")
        a, b, stranger = (await UdpPeer.open(A_IP), await UdpPeer.open(B_IP),
                          await UdpPeer.open(STRANGER_IP))
        session.set_remote(Side.A, *a.address)
        session.set_remote(Side.B, *b.address)
        stranger.send(RTP + b"inject", rtp_of(session, Side.A))   # before A's first RTP
        await asyncio.sleep(0.05)
        b.send(RTP + b"b-secret", rtp_of(session, Side.B))
        assert await a.recv() == RTP + b"b-secret"                  # B's audio reaches A
        assert await stranger.nothing()                             # and nobody else
        assert await b.nothing(0.01)                                # the injection went nowhere
        assert session.peer(Side.A) == a.address
        await talk(a, b, session)
        stats = relay.stats()
        assert stats.strangers == 1 and session.stats().a.strangers == 1
    run(test)


@pytest.mark.parametrize("latching", ["strict", "signalled_ip"])
def test_spraying_the_port_range_from_another_ip_takes_neither_side(run: Runner,
                                                                    latching: Latching) -> None:
    async def test() -> None:
        relay = relay_for(latching, pairs=4)
        cfg = config(latching, pairs=4)
        session = await relay.open_session("c1")
        a, b, stranger = (await UdpPeer.open(A_IP), await UdpPeer.open(B_IP),
                          await UdpPeer.open(STRANGER_IP))
        # Each party's RTCP goes to and comes from its RTP port (a=rtcp naming it).
        session.set_remote(Side.A, *a.address, a.address[1], sip_source=NAT_IP)
        session.set_remote(Side.B, *b.address, b.address[1], sip_source=B_IP)
        ports = range(cfg.ports.first, cfg.ports.last + 1)
        for port in ports:                                        # RTP and RTCP, both sides
            stranger.send(RTP + b"spray", (RELAY, port))
        await asyncio.sleep(0.05)
        await talk(a, b, session)
        b.send(SENDER_REPORT, rtcp_of(session, Side.B))
        assert (await a.received.get())[1] == rtcp_of(session, Side.A)   # RTCP: from A's side
        assert await stranger.nothing()
        assert relay.stats().strangers == 4     # the call's 4 ports; the other 4 are unbound
    run(test)


def test_strict_refuses_the_sdp_ip_on_another_port_for_rtp_and_rtcp(run: Runner) -> None:
    async def test() -> None:
        relay = relay_for("strict")
        session = await relay.open_session("c1")
        a, a_rtcp, a_other, b = (await UdpPeer.open(A_IP), await UdpPeer.open(A_IP),
                                 await UdpPeer.open(A_IP), await UdpPeer.open(B_IP))
        # RFC 3605 a=rtcp: A's RTCP is not at RTP + 1.
        session.set_remote(Side.A, A_IP, a.address[1], a_rtcp.address[1])
        session.set_remote(Side.B, *b.address, b.address[1])     # B's RTCP at its RTP port
        a_other.send(RTP + b"other-port", rtp_of(session, Side.A))
        a.send(SENDER_REPORT, rtcp_of(session, Side.A))           # RTCP from the RTP port
        assert await b.nothing()
        a_rtcp.send(SENDER_REPORT, rtcp_of(session, Side.A))      # from a=rtcp's port: heard
        assert await b.recv() == SENDER_REPORT
        b.send(RTP + b"b", rtp_of(session, Side.B))
        assert await a.recv() == RTP + b"b"
        assert await a_other.nothing(0.01)
        assert session.stats().a.strangers == 2
    run(test)


def test_strict_hears_nothing_before_the_sdp_address_is_known(run: Runner) -> None:
    async def test() -> None:
        relay = relay_for("strict")
        session = await relay.open_session("c1")
        a, b = await UdpPeer.open(A_IP), await UdpPeer.open(B_IP)
        session.set_remote(Side.A, *a.address)                    # B's answer not seen yet
        b.send(RTP + b"early", rtp_of(session, Side.B))
        a.send(RTP + b"a", rtp_of(session, Side.A))
        assert await a.nothing()                                  # B unknown: not heard
        assert session.peer(Side.B) is None                       # and not latched
        session.set_remote(Side.B, *b.address)
        await talk(a, b, session)
        stats = session.stats()
        assert (stats.b.strangers, stats.a.dropped) == (1, 1)
    run(test)


def test_signalled_ip_latches_the_sip_source_ip_on_any_port_and_never_another_ip(
        run: Runner) -> None:
    async def test() -> None:
        clock = FakeClock()
        relay = relay_for("signalled_ip", clock=clock.monotonic, relatch_after_s=2.0,
                          sweep=False)
        session = await relay.open_session("c1")
        # A's SDP names its private address; its packets come from the NAT's public one.
        sdp_a, nat_a, nat_a2, b, stranger = (
            await UdpPeer.open(A_IP), await UdpPeer.open(NAT_IP), await UdpPeer.open(NAT_IP),
            await UdpPeer.open(B_IP), await UdpPeer.open(STRANGER_IP))
        session.set_remote(Side.A, *sdp_a.address, sip_source=NAT_IP)
        session.set_remote(Side.B, *b.address, sip_source=B_IP)
        stranger.send(RTP + b"first", rtp_of(session, Side.A))    # another IP: refused
        b.send(RTP + b"early", rtp_of(session, Side.B))
        assert await sdp_a.recv() == RTP + b"early"               # before A speaks: SDP address
        nat_a.send(RTP + b"nat", rtp_of(session, Side.A))         # SIP source IP, other port
        assert await b.recv() == RTP + b"nat"
        assert session.peer(Side.A) == nat_a.address              # latched
        b.send(RTP + b"to-nat", rtp_of(session, Side.B))
        assert await nat_a.recv() == RTP + b"to-nat"
        assert await stranger.nothing(0.01) and await sdp_a.nothing(0.01)
        # Another port on the latched IP: only once the latched one has been silent 2 s.
        clock.advance(1.0)
        nat_a2.send(RTP + b"rebind-early", rtp_of(session, Side.A))
        assert await b.nothing()
        clock.advance(2.5)
        stranger.send(RTP + b"silent-now", rtp_of(session, Side.A))   # never another IP
        sdp_a.send(RTP + b"sdp-ip", rtp_of(session, Side.A))          # not even the SDP's
        assert await b.nothing()
        nat_a2.send(RTP + b"rebound", rtp_of(session, Side.A))
        assert await b.recv() == RTP + b"rebound"
        assert session.peer(Side.A) == nat_a2.address
        stats = session.stats().a
        assert (stats.strangers, stats.rejected) == (3, 1)
    run(test)


def test_signalled_ip_also_accepts_the_sdp_ip_on_another_port(run: Runner) -> None:
    async def test() -> None:
        relay = relay_for("signalled_ip")
        session = await relay.open_session("c1")
        sdp_a, a_other, b = (await UdpPeer.open(A_IP), await UdpPeer.open(A_IP),
                             await UdpPeer.open(B_IP))
        session.set_remote(Side.A, *sdp_a.address, sip_source=NAT_IP)
        session.set_remote(Side.B, *b.address)
        a_other.send(RTP + b"a", rtp_of(session, Side.A))
        assert await b.recv() == RTP + b"a"
        assert session.peer(Side.A) == a_other.address
    run(test)


def test_any_keeps_the_old_first_come_rule(run: Runner) -> None:
    """`any` is documented as unsafe: this is the hole strict closes."""
    async def test() -> None:
        relay = relay_for("any")
        session = await relay.open_session("c1")
        a, b, stranger = (await UdpPeer.open(A_IP), await UdpPeer.open(B_IP),
                          await UdpPeer.open(STRANGER_IP))
        session.set_remote(Side.A, *a.address)
        session.set_remote(Side.B, *b.address)
        stranger.send(RTP + b"inject", rtp_of(session, Side.A))
        assert await b.recv() == RTP + b"inject"
        b.send(RTP + b"b-secret", rtp_of(session, Side.B))
        assert await stranger.recv() == RTP + b"b-secret"
        assert await a.nothing()
        assert relay.stats().strangers == 0
    run(test)


@pytest.mark.parametrize("latching", ["strict", "signalled_ip"])
def test_a_reinvite_naming_a_new_address_moves_what_is_heard(run: Runner,
                                                             latching: Latching) -> None:
    async def test() -> None:
        relay = relay_for(latching)
        session = await relay.open_session("c1")
        a, moved, b = (await UdpPeer.open(A_IP), await UdpPeer.open(STRANGER_IP),
                       await UdpPeer.open(B_IP))
        session.set_remote(Side.A, *a.address, sip_source=A_IP)
        session.set_remote(Side.B, *b.address, sip_source=B_IP)
        await talk(a, b, session)
        # The re-INVITE's SDP (and its SIP source) moved A to another host: signalled.
        session.set_remote(Side.A, *moved.address, sip_source=STRANGER_IP)
        await talk(moved, b, session)
        a.send(RTP + b"old", rtp_of(session, Side.A))              # the old one is now a stranger
        assert await b.nothing()
        assert session.stats().a.strangers == 1
        # Hold by the RFC 2543 form (c=0.0.0.0): nothing is sent; who may send is unchanged.
        session.set_remote(Side.A, "0.0.0.0", moved.address[1])
        b.send(RTP + b"held", rtp_of(session, Side.B))
        assert await moved.nothing()
        moved.send(RTP + b"music", rtp_of(session, Side.A))
        assert await b.recv() == RTP + b"music"
    run(test)


def test_strangers_reach_the_metric(run: Runner) -> None:
    async def test() -> None:
        relay = relay_for("strict")
        metrics = Metrics(Sources(relay=relay.stats))
        session = await relay.open_session("c1")
        a, b, stranger = (await UdpPeer.open(A_IP), await UdpPeer.open(B_IP),
                          await UdpPeer.open(STRANGER_IP))
        session.set_remote(Side.A, *a.address)
        session.set_remote(Side.B, *b.address)
        for _ in range(3):
            stranger.send(RTP, rtp_of(session, Side.B))
        await talk(a, b, session)
        relay.close_session("c1")                                 # counts survive the call
        text = metrics.render().decode()
        assert 'sipmask_relay_dropped_total{reason="stranger"} 3.0' in text
    run(test)
