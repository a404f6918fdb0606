"""The RFC 3263 DNS shell (transport/resolver.py) over an injected table: SRV order, the
A/AAAA fallback, dead SRV targets, deadlines, and a TargetList refreshed only when its TTL
has passed. No query reaches a nameserver."""

from __future__ import annotations

import asyncio
import random

import pytest

from sipmask.sip.locate import Query, Server, SrvRecord, TargetList, plan
from sipmask.transport.resolver import DnsError, HostsDns, SystemDns, refresh, resolve


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_srv_targets_resolve_in_priority_order_on_their_ports() -> None:
    dns = HostsDns(hosts={"sbc1.carrier.example": ["127.0.0.11"],
                          "sbc2.carrier.example": ["127.0.0.12", "::1"]},
                   services={"_sip._udp.carrier.example": [
                       SrvRecord(20, 0, 5080, "sbc2.carrier.example"),
                       SrvRecord(10, 0, 5070, "sbc1.carrier.example")]}, ttl_s=30)
    query = plan("udp", "carrier.example", None)
    assert isinstance(query, Query)
    servers, ttl = run(resolve(dns, query))
    assert servers == [Server("udp", "127.0.0.11", 5070), Server("udp", "127.0.0.12", 5080),
                       Server("udp", "::1", 5080)]
    assert ttl == 30


def test_no_srv_record_falls_back_to_the_names_addresses_on_the_default_port() -> None:
    dns = HostsDns(hosts={"sbc.example": ["127.0.0.20"]})
    servers, _ = run(resolve(dns, Query("tls", "sbc.example", 5061, "_sips._tcp.sbc.example")))
    assert servers == [Server("tls", "127.0.0.20", 5061)]


def test_an_srv_target_without_an_address_is_skipped() -> None:
    dns = HostsDns(hosts={"live.example": ["127.0.0.21"]},
                   services={"_sip._udp.x.example": [SrvRecord(1, 0, 5060, "gone.example"),
                                                     SrvRecord(2, 0, 5060, "live.example")]})
    servers, _ = run(resolve(dns, Query("udp", "x.example", 5060, "_sip._udp.x.example")))
    assert servers == [Server("udp", "127.0.0.21", 5060)]


def test_an_unknown_name_is_a_dns_error() -> None:
    with pytest.raises(DnsError, match=r"nowhere\.example"):
        run(resolve(HostsDns(), Query("udp", "nowhere.example", 5060, None)))


class SlowDns(HostsDns):
    async def addresses(self, host: str) -> tuple[list[str], float]:
        await asyncio.sleep(10)
        raise AssertionError("not reached")


def test_a_resolver_that_does_not_answer_in_time_is_a_dns_error() -> None:
    with pytest.raises(DnsError, match=r"no answer in 0\.01 s"):
        run(resolve(SlowDns(), Query("udp", "slow.example", 5060, None), deadline_s=0.01))


def test_refresh_asks_only_for_stale_names_and_keeps_answers_on_failure() -> None:
    dns = HostsDns(hosts={"sbc.example": ["127.0.0.30"]}, ttl_s=60)
    targets = TargetList.of([("udp", "sbc.example", 5090), ("udp", "127.0.0.31", 5090)])
    run(refresh(targets, dns, now=0.0))
    assert dns.queries == 1
    assert targets.candidates() == [Server("udp", "127.0.0.30", 5090),
                                    Server("udp", "127.0.0.31", 5090)]
    run(refresh(targets, dns, now=59.0))
    assert dns.queries == 1                                   # cached for its TTL
    dns.hosts = {}                                            # the name disappears
    run(refresh(targets, dns, now=60.0))
    assert dns.queries == 2
    assert targets.candidates()[0] == Server("udp", "127.0.0.30", 5090)


def test_srv_weights_are_drawn_from_the_injected_generator() -> None:
    dns = HostsDns(hosts={"a.example": ["127.0.0.41"], "b.example": ["127.0.0.42"]},
                   services={"_sip._udp.w.example": [SrvRecord(1, 50, 5060, "a.example"),
                                                     SrvRecord(1, 50, 5060, "b.example")]})
    query = Query("udp", "w.example", 5060, "_sip._udp.w.example")
    firsts = {run(resolve(dns, query, draw=random.Random(seed)))[0][0].ip for seed in range(40)}
    assert firsts == {"127.0.0.41", "127.0.0.42"}


def test_the_system_resolver_answers_rfc_6761_names_without_asking_a_nameserver() -> None:
    """`localhost` is the loopback addresses (RFC 6761 §6.3), an `invalid` name does not
    exist (§6.4): answered before dnspython is even loaded, so no query ever leaves."""
    dns = SystemDns()
    assert run(dns.addresses("localhost"))[0] == ["127.0.0.1", "::1"]
    assert run(dns.srv("_sip._udp.sbc.localhost."))[0] == []
    with pytest.raises(DnsError, match=r"sbc\.carrier\.invalid"):
        run(dns.addresses("sbc.carrier.invalid"))
    with pytest.raises(DnsError):
        run(resolve(dns, Query("udp", "sbc.invalid", 5060, "_sip._udp.sbc.invalid")))
    assert dns._resolver is None            # dnspython never asked
