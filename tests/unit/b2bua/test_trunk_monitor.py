"""The trunk monitor (b2bua/trunks.py), the shell that keeps each trunk's targets current and
feeds them to the call core: host names resolved per RFC 3263 through the injected resolver
(HostsDns: no query reaches a nameserver) and cached for their TTL, OPTIONS probes marking
a server down and up again (§4.3), a reload's new targets. Over tests/support's ShellHarness
(the asyncio Engine on a real transaction layer, the fake clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sipmask.config.schema import Config
from sipmask.sip.message import Request, Response
from sipmask.transport.resolver import HostsDns
from tests.support.engine import (
    A_ADDR,
    B_ADDR,
    B_NUM,
    ShellHarness,
    a_invite,
    b_response,
    bind_axb,
    harness_config,
)

C_ADDR = ("127.0.0.4", 5090)
TWO = "trunks.carrier.outbound=[udp://127.0.0.1:5090, udp://127.0.0.4:5090]"


def run(flow: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(flow())


def shell(*overrides: str, dns: HostsDns | None = None) -> ShellHarness:
    config: Config = harness_config(overrides=overrides)
    h = ShellHarness(config=config, dns=dns)
    bind_axb(h)
    return h


def requests(h: ShellHarness, dest: tuple[str, int], method: str) -> list[Request]:
    return [m for m in h.take(dest) if isinstance(m, Request) and m.method == method]


def statuses(h: ShellHarness) -> list[int]:
    return [m.status for m in h.take(A_ADDR) if isinstance(m, Response)]


async def call(h: ShellHarness, n: int) -> None:
    h.deliver(a_invite(branch=f"z9hG4bKcall{n}"), A_ADDR)
    await h.idle()


def test_a_host_name_is_resolved_through_the_injected_resolver_and_kept_for_its_ttl() -> None:
    async def flow() -> None:
        dns = HostsDns(hosts={"sbc.carrier.example": ["127.0.0.4"]}, ttl_s=60)
        h = shell("trunks.carrier.outbound=udp://sbc.carrier.example:5090", dns=dns)
        await h.engine.trunks.step()
        assert dns.queries == 1
        await call(h, 1)
        [invite] = requests(h, C_ADDR, "INVITE")
        # RFC 3263: the URI keeps the name; the request goes to the address it resolved to.
        assert invite.uri == f"sip:{B_NUM}@sbc.carrier.example:5090;user=phone"
        h.clock.advance(59)
        await h.engine.trunks.step()
        assert dns.queries == 1                         # cached for its TTL
        h.clock.advance(1)
        dns.hosts = {"sbc.carrier.example": ["127.0.0.1"]}
        await h.engine.trunks.step()
        assert dns.queries == 2
        await call(h, 2)
        assert [m.method for m in requests(h, ("127.0.0.1", 5090), "INVITE")] == ["INVITE"]
    run(flow)


def test_a_name_that_does_not_resolve_is_503_trunk_unreachable_at_once() -> None:
    async def flow() -> None:
        h = shell("trunks.carrier.outbound=udp://sbc.carrier.example:5090", dns=HostsDns())
        await h.engine.trunks.step()
        await call(h, 1)
        assert statuses(h) == [100, 503]
        [cdr] = h.cdrs.records
        assert (cdr.sip_status, cdr.unconnected_cause) == (503, "trunk_unreachable")
        assert h.engine.calls == {}
    run(flow)


def test_probes_mark_a_silent_target_down_and_take_it_back_when_it_answers() -> None:
    async def flow() -> None:
        h = shell(TWO, "trunks.carrier.probe_interval_s=10",
                  "trunks.carrier.failover_timeout_ms=2000")
        await h.engine.trunks.step()
        [probe_b] = requests(h, B_ADDR, "OPTIONS")
        [probe_c] = requests(h, C_ADDR, "OPTIONS")
        assert probe_b.uri == "sip:127.0.0.1:5090" and probe_c.uri == "sip:127.0.0.4:5090"
        h.deliver(b_response(probe_c, 200), C_ADDR)
        h.clock.advance(2.0)                           # the first target never answers
        await h.engine.trunks.step()
        await call(h, 1)
        assert requests(h, B_ADDR, "INVITE") == []     # straight to the live one
        assert len(requests(h, C_ADDR, "INVITE")) == 1
        h.clock.advance(8.0)                           # the next round
        await h.engine.trunks.step()
        [probe_b] = requests(h, B_ADDR, "OPTIONS")
        [probe_c] = requests(h, C_ADDR, "OPTIONS")
        h.deliver(b_response(probe_b, 200), B_ADDR)    # it answers again: taken back
        h.deliver(b_response(probe_c, 503), C_ADDR)    # would refuse calls: down
        await call(h, 2)
        assert len(requests(h, B_ADDR, "INVITE")) == 1
        assert requests(h, C_ADDR, "INVITE") == []
        stats = h.engine.stats            # sipmask_trunk_events_total{event}
        assert (stats["trunk_target_down"], stats["trunk_target_up"]) == (2, 1)
    run(flow)


def test_a_single_target_is_never_probed() -> None:
    async def flow() -> None:
        h = shell("trunks.carrier.probe_interval_s=1")
        for _ in range(3):
            await h.engine.trunks.step()
            h.clock.advance(1.0)
        assert requests(h, B_ADDR, "OPTIONS") == []
    run(flow)


def test_a_reload_places_new_calls_on_the_new_targets() -> None:
    async def flow() -> None:
        h = shell()
        h.engine.reconfigure(harness_config(overrides=[
            "trunks.carrier.outbound=[udp://127.0.0.4:5090, udp://127.0.0.1:5090]"]))
        await h.engine.trunks.step()
        await call(h, 1)
        assert len(requests(h, C_ADDR, "INVITE")) == 1
        assert requests(h, B_ADDR, "INVITE") == []
    run(flow)


def test_a_reload_that_leaves_a_trunks_targets_alone_keeps_what_probing_learnt() -> None:
    async def flow() -> None:
        keys = (TWO, "trunks.carrier.probe_interval_s=10",
                "trunks.carrier.failover_timeout_ms=2000")
        h = shell(*keys)
        await h.engine.trunks.step()
        [probe_c] = requests(h, C_ADDR, "OPTIONS")
        h.deliver(b_response(probe_c, 200), C_ADDR)
        h.clock.advance(2.0)
        await h.engine.trunks.step()                   # the first target is down
        h.engine.reconfigure(harness_config(overrides=[
            *keys, "trunks.carrier.inbound_allow=['192.0.2.0/24', '127.0.0.0/8', '10.0.0.0/8']"]))
        await call(h, 1)                               # fed at once, before any step
        assert requests(h, B_ADDR, "INVITE") == []
        assert len(requests(h, C_ADDR, "INVITE")) == 1
    run(flow)
