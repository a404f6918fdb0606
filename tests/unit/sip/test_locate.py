"""RFC 3263 §4.2 with an explicit transport, RFC 2782's SRV order, and the trunk's target
list (TTL, probing): sip/locate.py, no I/O."""

from __future__ import annotations

import random
from collections import Counter

from sipmask.sip.locate import (
    Query,
    Server,
    SrvRecord,
    Target,
    TargetList,
    order_srv,
    plan,
    probe_answered,
)


def test_an_ip_literal_needs_no_query_and_takes_the_transports_default_port() -> None:
    assert plan("udp", "10.0.0.5", None) == Server("udp", "10.0.0.5", 5060)
    assert plan("tls", "2001:db8::1", None) == Server("tls", "2001:db8::1", 5061)
    assert plan("tcp", "10.0.0.5", 5080) == Server("tcp", "10.0.0.5", 5080)


def test_a_name_with_a_port_asks_for_addresses_only() -> None:
    assert plan("udp", "sbc.carrier.example", 5090) == Query(
        "udp", "sbc.carrier.example", 5090, None)


def test_a_name_without_a_port_asks_for_the_transports_srv_records() -> None:
    assert plan("udp", "carrier.example", None).srv_name == "_sip._udp.carrier.example"  # type: ignore[union-attr]
    assert plan("tcp", "carrier.example.", None).srv_name == "_sip._tcp.carrier.example"  # type: ignore[union-attr]
    assert plan("tls", "carrier.example", None).srv_name == "_sips._tcp.carrier.example"  # type: ignore[union-attr]


def test_srv_records_go_by_priority_then_by_weight() -> None:
    records = [SrvRecord(20, 0, 5060, "backup.example"), SrvRecord(10, 90, 5060, "big.example"),
               SrvRecord(10, 10, 5060, "small.example")]
    firsts: Counter[str] = Counter()
    rng = random.Random(7)
    for _ in range(2000):
        ordered = order_srv(records, lambda n: rng.randint(0, n))
        assert ordered[-1].target == "backup.example"          # priority 20 after 10
        assert {r.target for r in ordered} == {"big.example", "small.example", "backup.example"}
        firsts[ordered[0].target] += 1
    # Weight 90 against 10: about nine in ten picks first.
    assert 0.85 < firsts["big.example"] / 2000 < 0.95, firsts


def test_a_dot_target_means_no_service_there() -> None:
    assert order_srv([SrvRecord(0, 0, 0, ".")], lambda n: 0) == []


def test_zero_weight_records_are_still_ordered() -> None:
    records = [SrvRecord(1, 0, 5060, "a.example"), SrvRecord(1, 0, 5060, "b.example")]
    assert [r.target for r in order_srv(records, lambda n: 0)] == ["a.example", "b.example"]


def test_the_target_list_keeps_answers_for_their_ttl_and_retries_failures_later() -> None:
    targets = TargetList.of([("udp", "sbc.example", 5060), ("udp", "10.0.0.9", None)],
                            min_ttl_s=5)
    query = Query("udp", "sbc.example", 5060, None)
    assert targets.stale(0.0) == [query]                      # the IP literal never is
    assert targets.candidates() == [Server("udp", "10.0.0.9", 5060)]
    targets.resolved(query, [Server("udp", "192.0.2.1", 5060)], ttl_s=30, now=0.0)
    assert targets.stale(29.9) == [] and targets.stale(30.0) == [query]
    assert targets.candidates() == [Server("udp", "192.0.2.1", 5060),
                                    Server("udp", "10.0.0.9", 5060)]
    targets.failed(query, now=30.0)                           # keeps the old answer
    assert targets.candidates()[0] == Server("udp", "192.0.2.1", 5060)
    assert targets.stale(34.9) == [] and targets.stale(35.0) == [query]
    targets.resolved(query, [Server("udp", "192.0.2.2", 5060)], ttl_s=1, now=40.0)
    assert targets.stale(44.9) == []                          # at least min_ttl_s


def test_a_server_probing_found_down_is_tried_last_and_again_once_it_answers() -> None:
    targets = TargetList.of([("udp", "10.0.0.1", 5060), ("udp", "10.0.0.2", 5060)])
    first, second = targets.candidates()
    targets.probed(first, answered=False)
    assert targets.candidates() == [second, first]
    targets.probed(first, answered=True)
    assert targets.candidates() == [first, second]


def test_targets_name_the_uri_each_server_came_from() -> None:
    """RFC 3263 §4: the Request-URI keeps the URI's host (and port, when it had one); only
    where the request goes is resolved."""
    targets = TargetList.of([("udp", "sbc.example", None), ("udp", "10.0.0.9", 5070),
                             ("udp", "10.0.0.9", 5070)])
    [query] = targets.stale(0.0)
    targets.resolved(query, [Server("udp", "192.0.2.1", 5080)], ttl_s=60, now=0.0)
    assert targets.targets() == [
        Target(Server("udp", "192.0.2.1", 5080), "sbc.example", None),
        Target(Server("udp", "10.0.0.9", 5070), "10.0.0.9", 5070)]      # once each


def test_probes_go_to_every_server_when_there_is_a_choice_on_their_interval() -> None:
    targets = TargetList.of([("udp", "10.0.0.1", 5060), ("udp", "10.0.0.2", 5060)],
                            probe_interval_s=30, probe_timeout_s=2)
    first, second = targets.candidates()
    assert targets.probes_due(100.0) == [first, second]
    assert targets.probes_due(101.0) == []                  # one round per interval
    assert targets.next_due() == 102.0                      # the probes' deadline
    assert targets.probed(second, answered=True) is False   # it was up: nothing changes
    assert targets.overdue(101.9) == []
    assert targets.overdue(102.0) == [first]                # no answer in time: down
    assert targets.candidates() == [second, first]
    assert targets.next_due() == 130.0
    assert targets.probes_due(130.0) == [first, second]
    assert targets.probed(first, answered=True) is True     # taken back
    assert targets.candidates() == [first, second]


def test_no_probes_without_a_choice_or_with_probing_off() -> None:
    one = TargetList.of([("udp", "10.0.0.1", 5060)], probe_interval_s=30)
    assert one.probes_due(0.0) == [] and one.probes_due(60.0) == []
    off = TargetList.of([("udp", "10.0.0.1", 5060), ("udp", "10.0.0.2", 5060)],
                        probe_interval_s=0)
    assert off.probes_due(0.0) == [] and off.next_due() == float("inf")
    named = TargetList.of([("udp", "sbc.example", 5060)])
    assert named.next_due() == float("-inf")                # never resolved: now


def test_an_options_answer_shows_the_server_up_unless_it_would_refuse_calls() -> None:
    """RFC 3261 §11.2: OPTIONS is answered as an INVITE would be: a 503 there means the
    server refuses calls too (a draining sipmask answers so)."""
    assert probe_answered(200) and probe_answered(404) and probe_answered(405)
    assert not probe_answered(503)
