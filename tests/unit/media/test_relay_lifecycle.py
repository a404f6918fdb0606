"""The relay's per-call session lifecycle: the idle pool of bound port pairs (reuse only
after the quarantine, never before it; no socket bound and no await on a pool hit; a pair
that never reached a call goes back with the quarantine it had), the counters a session
reports at its end, and the side and port lookups. Real UDP sockets on 127.0.0.1, no
packets: counters are set on the streams directly."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from sipmask.clock import FakeClock
from sipmask.config.schema import MediaConfig
from sipmask.errors import PortsExhausted
from sipmask.media import relay as relay_module
from sipmask.media.backend import CallStats, LegStats
from sipmask.media.relay import POOL_QUARANTINE_S, Relay, RelaySession, Side
from tests.support.media import LOOP_KINDS, Runner, close_after, loop_runner, port_range

HOST = "127.0.0.1"


def config(pairs: int) -> MediaConfig:
    """A range below the kernel's ephemeral ports and apart from the integration tests' and
    the benches' (20000-29999), spread by pid so parallel runs differ."""
    assert pairs <= 2000
    return MediaConfig(address=HOST,
                       ports=port_range(pairs, first=10000, step=64, spread=6000),
                       timeout_s=60)


@pytest.fixture(params=LOOP_KINDS)
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    with loop_runner(request.param) as runner:
        yield runner


@pytest.fixture
def binds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The RTP port of every pair the relays bind (a new pair of sockets each); a port
    another process holds fails to bind and is not counted."""
    bound: list[int] = []
    original = Relay._bind_pair

    def counting(self: Relay, pair: Any) -> tuple[socket.socket, socket.socket]:
        socks = original(self, pair)
        bound.append(pair.rtp)
        return socks

    monkeypatch.setattr(Relay, "_bind_pair", counting)
    return bound


def relay_on(clock: FakeClock, pairs: int) -> Relay:
    return close_after(Relay(config(pairs), on_timeout=lambda call_id: None,
                             clock=clock.monotonic, sweep=False))


def ports(session: RelaySession) -> set[int]:
    return {session.local(side).rtp for side in Side}


def test_reuse_waits_for_the_quarantine_then_binds_nothing(run: Runner,
                                                           binds: list[int]) -> None:
    async def test() -> None:
        clock = FakeClock()
        relay = relay_on(clock, pairs=8)
        first = await relay.open_session("c1")
        used = ports(first)
        assert len(binds) == 2
        relay.close_session("c1")
        clock.advance(POOL_QUARANTINE_S - 0.001)       # not yet: fresh ports
        second = await relay.open_session("c2")
        assert not used & ports(second) and len(binds) == 4 and relay.pool_reused == 0
        clock.advance(0.001)                           # the quarantine is over
        # A pool hit does not suspend: the coroutine finishes on its first step.
        step = relay.open_session("c3")
        with pytest.raises(StopIteration) as done:
            step.send(None)
        third: RelaySession = done.value.value
        assert ports(third) == used and len(binds) == 4 and relay.pool_reused == 2
        assert relay.session("c3") is third
        # Fresh as a new socket: no peer, no latch, zero counters, a new CNAME.
        for side in Side:
            assert third.peer(side) is None
        assert third.stats() == CallStats("c3", LegStats(), LegStats())
        assert first._cnames[0] not in third._cnames
        await relay.close()
    run(test)


def test_steady_state_at_a_rate_binds_only_until_the_pool_covers_the_quarantine(
        run: Runner, binds: list[int]) -> None:
    """400 calls a second of 100 ms: once 2 s of released pairs are pooled every call is
    served from the pool, and no pair comes back before its quarantine."""
    async def test() -> None:
        clock = FakeClock()
        relay = relay_on(clock, pairs=2000)
        released: dict[int, float] = {}
        open_calls: list[tuple[float, str]] = []
        for n in range(2000):
            clock.advance(0.0025)
            now = clock.monotonic()
            while open_calls and open_calls[0][0] <= now:
                _, call_id = open_calls.pop(0)
                session = relay.session(call_id)
                assert session is not None
                for port in ports(session):
                    released[port] = now
                relay.close_session(call_id)
            session = await relay.open_session(f"c{n}")
            for port in ports(session):
                assert now - released.pop(port, -1e9) >= POOL_QUARANTINE_S
            open_calls.append((now + 0.1, f"c{n}"))
            if n == 1000:
                bound_by_then = len(binds)
        # 2.1 s of calls (a call's 100 ms and the quarantine) at two pairs each, and none
        # bound after.
        assert bound_by_then == len(binds) <= 2 * (2.1 * 400 + 2)
        assert relay.pool_reused == 2 * 2000 - len(binds)
        await relay.close()
    run(test)


def test_a_pair_out_of_quarantine_is_not_paired_with_one_still_in_it(
        run: Runner, binds: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    async def test() -> None:
        monkeypatch.setattr(relay_module, "POOL_MAX_IDLE", 3)
        clock = FakeClock()
        relay = relay_on(clock, pairs=8)
        c1, c2 = await relay.open_session("c1"), await relay.open_session("c2")
        c1_ports, c2_ports = ports(c1), ports(c2)
        relay.close_session("c1")                     # pool: c1's two pairs, until t+2
        clock.advance(1)
        relay.close_session("c2")                     # pool: one of c2's, until t+3
        pooled = {pair.rtp for _, pair, _ in relay._idle} - c1_ports
        assert len(pooled) == 1 and pooled < c2_ports
        clock.advance(1)
        assert ports(await relay.open_session("c3")) == c1_ports
        relay.close_session("c3")                     # pool: c2's one, then c1's two (t+4)
        clock.advance(1)
        before = len(binds)
        c4 = ports(await relay.open_session("c4"))    # c2's pair is free, c1's are not
        assert pooled < c4 and not c4 & c1_ports and len(binds) == before + 1
        await relay.close()
    run(test)


def test_a_fresh_pair_of_a_failed_open_is_pooled_for_the_next_call(run: Runner,
                                                                  binds: list[int]) -> None:
    async def test() -> None:
        clock = FakeClock()
        relay = relay_on(clock, pairs=1)
        with pytest.raises(PortsExhausted):
            await relay.open_session("c1")            # side A got the only pair, B none
        assert relay.session("c1") is None and len(binds) == 1
        stats = relay.stats()
        assert (stats.ports_in_use, stats.ports_idle) == (0, 2)
        (until, pair, streams), = relay._idle
        assert until == float("-inf") and pair.rtp == binds[0]       # no party saw it
        assert all(stream.transport is not None for stream in streams)
        with pytest.raises(PortsExhausted):
            await relay.open_session("c2")            # taken again, not bound again
        assert len(binds) == 1 and len(relay._idle) == 1
        await relay.close()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)    # the ports are free
        probe.bind((HOST, binds[0]))
        probe.close()
    run(test)


def test_a_pooled_pair_of_a_failed_open_keeps_its_quarantine(
        run: Runner, binds: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    async def test() -> None:
        monkeypatch.setattr(relay_module, "POOL_MAX_IDLE", 1)
        clock = FakeClock()
        relay = relay_on(clock, pairs=3)
        await relay.open_session("c1")
        relay.close_session("c1")                     # one pair pooled until t+2
        (until, quarantined, _), = relay._idle
        assert until == clock.monotonic() + POOL_QUARANTINE_S
        await relay.open_session("c2")                # the two free pairs
        with pytest.raises(PortsExhausted):
            # Nothing free: side A takes the pooled pair in its quarantine (better than
            # refusing the call), side B finds nothing.
            await relay.open_session("c3")
        assert [(u, p) for u, p, _ in relay._idle] == [(until, quarantined)]
        relay.close_session("c2")                     # pool full: c2's pairs are freed
        await asyncio.sleep(0)                        # (their sockets close next turn)
        clock.advance(1)
        c4 = ports(await relay.open_session("c4"))    # fresh pairs, not the quarantined
        assert quarantined.rtp not in c4 and len(c4) == 2
        await relay.close()
    run(test)


def _set(session: RelaySession, side: Side, index: int, base: int,
         heard: float | None) -> None:
    """Distinct counters on one side's RTP and RTCP of media line `index`."""
    for offset, stream in enumerate(session._media[index].streams[side]):
        k = base + 10 * offset
        stream.packets_in, stream.bytes_in, stream.packets_out = k + 1, k + 2, k + 3
        stream.bytes_out, stream.dropped, stream.rejected = k + 4, k + 5, k + 6
        stream.last_in = heard if offset == 0 else 1e9     # RTCP is not RTP heard


def test_stats_sum_rtp_and_rtcp_over_media_lines_and_close_counts_once(
        run: Runner) -> None:
    async def test() -> None:
        clock = FakeClock()
        relay = relay_on(clock, pairs=8)
        session = await relay.open_session("c1")
        await relay.add_media(session)
        _set(session, Side.A, 0, 100, 5.0)
        _set(session, Side.A, 1, 200, 7.0)
        _set(session, Side.B, 0, 300, None)
        _set(session, Side.B, 1, 400, 3.0)
        a = LegStats(packets_in=101 + 111 + 201 + 211, bytes_in=102 + 112 + 202 + 212,
                     packets_out=103 + 113 + 203 + 213, bytes_out=104 + 114 + 204 + 214,
                     dropped=105 + 115 + 205 + 215, rejected=106 + 116 + 206 + 216,
                     last_rtp_at=7.0)
        b = LegStats(packets_in=301 + 311 + 401 + 411, bytes_in=302 + 312 + 402 + 412,
                     packets_out=303 + 313 + 403 + 413, bytes_out=304 + 314 + 404 + 414,
                     dropped=305 + 315 + 405 + 415, rejected=306 + 316 + 406 + 416,
                     last_rtp_at=3.0)
        assert session.leg_stats(Side.A) == session.leg_stats("a") == a
        assert session.leg_stats("b") == b
        expected = CallStats("c1", a, b)
        assert session.stats() == expected
        final = relay.close_session("c1")
        assert final == expected and session.close() == expected   # twice: same answer
        # Its sockets are pooled with zero counters; the closed session keeps its own.
        assert all(stream.packets_in == 0 for _, _, streams in relay._idle
                   for stream in streams)
        assert session.stats() == expected and session.leg_stats("b") == b
        totals = relay.stats()
        assert totals.packets_relayed == a.packets_out + b.packets_out
        assert totals.bytes_relayed == a.bytes_out + b.bytes_out
        assert (totals.dropped, totals.rejected) == (a.dropped + b.dropped,
                                                     a.rejected + b.rejected)
        assert (totals.active_sessions, totals.ports_idle) == (0, 8)
        await relay.close()
    run(test)


def test_one_media_line_with_no_rtp_heard(run: Runner) -> None:
    async def test() -> None:
        relay = relay_on(FakeClock(), pairs=4)
        session = await relay.open_session("c1")
        _set(session, Side.A, 0, 0, None)
        assert session.leg_stats(Side.A) == LegStats(12, 14, 16, 18, 20, 22, None)
        assert session.leg_stats(Side.B) == LegStats()
        await relay.close()
    run(test)


def test_sides_by_name_ports_as_bound_and_one_cname_per_party(run: Runner) -> None:
    async def test() -> None:
        clock = FakeClock()
        relay = relay_on(clock, pairs=4)
        session = await relay.open_session("c1")
        for side in Side:
            rtp, rtcp = session._media[0].streams[side]
            local = session.local(side)
            assert session.local(side.value) == local
            assert local.rtp == rtp.sock.getsockname()[1] and local.rtcp == local.rtp + 1
            assert rtcp.sock.getsockname()[1] == local.rtcp
            # RFC 7022 §4.2: 96 random bits, the same on RTP and RTCP of a party.
            assert rtp.cname == rtcp.cname and len(base64.urlsafe_b64decode(rtp.cname)) == 12
        assert session._cnames[0] != session._cnames[1]
        for bad in ("c", "A", ""):
            with pytest.raises(ValueError, match="not a valid Side"):
                session.local(bad)
            with pytest.raises(ValueError, match="not a valid Side"):
                session.set_remote(bad, HOST, 4000)
            with pytest.raises(ValueError, match="not a valid Side"):
                session.leg_stats(bad)
        # The timeout arms once both sides have an address, whichever way they are named.
        session.set_remote("a", HOST, 4000)
        session.set_remote(Side.A, HOST, 4002)
        assert session._armed_at is None
        session.set_remote("b", HOST, 4004)
        assert session._armed_at == clock.monotonic()
        assert session.peer("a") == (HOST, 4002) and session.peer(Side.B) == (HOST, 4004)
        await relay.close()
    run(test)
