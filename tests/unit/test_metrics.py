"""Metrics: the families render, sources are read at scrape time, no label carries a
number, and the label guard refuses number-shaped values."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sipmask.events.outbox import Outbox, new_event
from sipmask.events.webhook import DeliveryStats
from sipmask.media.disk import WriterStats
from sipmask.media.relay import ServiceCounters
from sipmask.observability.metrics import (
    OUTCOMES,
    REFUSAL_REASONS,
    LabelRefused,
    Metrics,
    Sources,
    outcome_of,
    safe_label,
)
from sipmask.store.lmdb import LmdbStore
from sipmask.transport.counters import SipCounters

FAMILIES = {
    "sipmask_calls", "sipmask_active_calls", "sipmask_call_setup_seconds",
    "sipmask_sip_parse_errors", "sipmask_sip_messages", "sipmask_refusals",
    "sipmask_relay_packets", "sipmask_relay_dropped", "sipmask_store_bytes",
    "sipmask_store_bindings", "sipmask_event_backlog", "sipmask_transactions",
    "sipmask_media_sessions", "sipmask_events_delivered", "sipmask_event_delivery_failures",
    "sipmask_events_dropped", "sipmask_media_prompt_packets", "sipmask_media_prompts_unplayable",
    "sipmask_media_digits", "sipmask_recordings_started", "sipmask_recordings_failed",
    "sipmask_recording_queue_bytes", "sipmask_recording_writes_dropped",
    "sipmask_recording_dropped_bytes", "sipmask_store_loop_connected",
}


@dataclass
class FakeCall:
    invite_at: float = 100.0
    ring_at: float | None = None
    answer_at: float | None = None
    sip_status: int | None = None
    unconnected_cause: str = "none"


@dataclass(frozen=True)
class RelayFigures:
    active_sessions: int = 3
    packets_relayed: int = 1000
    bytes_relayed: int = 172000
    dropped: int = 4
    rejected: int = 2
    strangers: int = 5
    rtcp_dropped: int = 6
    timeouts: int = 1
    ports_in_use: int = 12


@dataclass
class Live:
    calls: int = 0
    txns: dict[str, int] = field(default_factory=lambda: {"invite_server": 2})


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def full_metrics(tmp_path: Path, live: Live) -> tuple[Metrics, LmdbStore]:
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    outbox.enqueue(new_event("ring", call_id="c", binding_id="b", tenant="demo",
                             x="700100000000001", at=0.0))
    sip = SipCounters(received=5, sent=4, parse_errors=1,
                      requests_by_method=Counter({"INVITE": 2, "OPTIONS": 1,
                                                  "13800000001": 1}),
                      responses_by_status=Counter({180: 1, 200: 1}))
    metrics = Metrics(Sources(
        active_calls=lambda: live.calls, transactions=lambda: live.txns, sip=lambda: sip,
        relay=RelayFigures, store_bytes=store.disk_bytes, store_bindings=lambda: 7,
        store_loop=lambda: {"lookups": 1, "batches": 0},
        event_backlog=outbox.backlog, events_dropped=lambda: outbox.dropped,
        event_delivery=lambda: DeliveryStats(9, 2),
        media_services=lambda: ServiceCounters(prompt_packets=250, prompts_unplayable=1,
                                               digits=4, recordings_started=3,
                                               recordings_failed=1),
        recording_disk=lambda: WriterStats(queued_bytes=64000, dropped_writes=2,
                                           dropped_bytes=64000)))
    return metrics, store


def test_render_has_every_family_and_reads_sources_at_scrape_time(tmp_path: Path) -> None:
    live = Live()
    metrics, store = full_metrics(tmp_path, live)
    metrics.call_finished(FakeCall(ring_at=100.004, answer_at=101.0, sip_status=200))
    metrics.refused("no_binding")
    live.calls = 4
    text = metrics.render()
    names = {f.name for f in text_string_to_metric_families(text.decode())}
    assert names >= FAMILIES
    got = samples(text)
    assert got[("sipmask_calls_total", (("outcome", "answered"),))] == 1
    assert got[("sipmask_calls_total", (("outcome", "busy"),))] == 0     # shown at zero
    assert got[("sipmask_refusals_total", (("reason", "no_binding"),))] == 1
    assert got[("sipmask_call_setup_seconds_bucket", (("le", "0.0025"),))] == 0
    assert got[("sipmask_call_setup_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("sipmask_active_calls", ())] == 4
    assert got[("sipmask_transactions", (("kind", "invite_server"),))] == 2
    assert got[("sipmask_transactions", (("kind", "invite_client"),))] == 0
    assert got[("sipmask_sip_messages_total", (("direction", "in"), ("kind", "request")))] == 4
    assert got[("sipmask_sip_messages_total", (("direction", "out"), ("kind", "all")))] == 4
    assert got[("sipmask_sip_requests_received_total", (("method", "other"),))] == 1
    assert got[("sipmask_sip_responses_received_total", (("class", "1xx"),))] == 1
    assert got[("sipmask_sip_parse_errors_total", ())] == 1
    assert got[("sipmask_relay_packets_total", ())] == 1000
    assert got[("sipmask_relay_dropped_total", (("reason", "wrong_source"),))] == 2
    assert got[("sipmask_relay_dropped_total", (("reason", "stranger"),))] == 5
    assert got[("sipmask_relay_dropped_total", (("reason", "rtcp"),))] == 6
    assert got[("sipmask_media_sessions", ())] == 3
    assert got[("sipmask_event_backlog", ())] == 1
    assert got[("sipmask_events_delivered_total", ())] == 9
    assert got[("sipmask_events_dropped_total", ())] == 0
    assert got[("sipmask_store_bindings", ())] == 7
    assert got[("sipmask_store_bytes", ())] > 0
    assert got[("sipmask_store_loop_connected", (("connection", "lookups"),))] == 1
    assert got[("sipmask_store_loop_connected", (("connection", "batches"),))] == 0
    # Media services (issue 15): announcements, keys, recordings and their disk thread.
    assert got[("sipmask_media_prompt_packets_total", ())] == 250
    assert got[("sipmask_media_prompts_unplayable_total", ())] == 1
    assert got[("sipmask_media_digits_total", ())] == 4
    assert got[("sipmask_recordings_started_total", ())] == 3
    assert got[("sipmask_recordings_failed_total", ())] == 1
    assert got[("sipmask_recording_queue_bytes", ())] == 64000
    assert got[("sipmask_recording_writes_dropped_total", ())] == 2
    assert got[("sipmask_recording_dropped_bytes_total", ())] == 64000
    live.calls = 1
    assert samples(metrics.render())[("sipmask_active_calls", ())] == 1
    store.close()


def test_no_label_value_looks_like_a_number(tmp_path: Path) -> None:
    # The SIP counters above include a "method" that is a phone number, as a hostile peer
    # could send; it must be folded into "other".
    metrics, store = full_metrics(tmp_path, Live())
    text = metrics.render().decode()
    labels = re.findall(r'="([^"]*)"', text)
    assert labels and not [v for v in labels if re.search(r"\d{7,}", v)]
    assert "13800000001" not in text
    store.close()


def test_the_guard_refuses_number_shaped_and_unknown_label_values() -> None:
    assert safe_label("no_binding", REFUSAL_REASONS) == "no_binding"
    assert safe_label("1xx") == "1xx"
    assert safe_label("a123456b") == "a123456b"          # six digits in a row are fine
    with pytest.raises(LabelRefused) as refused:
        safe_label("13800000001")
    assert "13800000001" not in str(refused.value)       # the error does not leak it
    with pytest.raises(LabelRefused):
        safe_label("tenant-700100000000001")
    with pytest.raises(LabelRefused, match="not one of"):
        safe_label("mystery", OUTCOMES)
    metrics = Metrics()
    with pytest.raises(LabelRefused):
        metrics.refused("13900000002")
    with pytest.raises(LabelRefused):
        metrics.count_call("picked_up")


def test_a_source_with_a_number_shaped_label_loses_its_family_not_the_page() -> None:
    metrics = Metrics(Sources(transactions=lambda: {"13800000001": 1}, active_calls=lambda: 2))
    text = metrics.render().decode()
    assert "13800000001" not in text and "sipmask_transactions" not in text
    assert "sipmask_active_calls 2.0" in text


def test_a_failing_source_does_not_take_metrics_down() -> None:
    def broken() -> int:
        raise RuntimeError("store closed")
    text = Metrics(Sources(store_bytes=broken, active_calls=lambda: 1)).render().decode()
    assert "sipmask_store_bytes" not in text and "sipmask_active_calls 1.0" in text


@pytest.mark.parametrize(("call", "outcome"), [
    (FakeCall(ring_at=101.0, answer_at=102.0, sip_status=200), "answered"),
    (FakeCall(sip_status=404, unconnected_cause="no_binding"), "refused"),
    (FakeCall(sip_status=403, unconnected_cause="blacklist"), "refused"),
    (FakeCall(ring_at=101.0, sip_status=487), "cancelled"),
    (FakeCall(sip_status=486, unconnected_cause="callee_failed"), "busy"),
    (FakeCall(sip_status=600, unconnected_cause="callee_failed"), "busy"),
    (FakeCall(ring_at=101.0, sip_status=408, unconnected_cause="timeout"), "no_answer"),
    (FakeCall(sip_status=480, unconnected_cause="callee_failed"), "no_answer"),
    (FakeCall(sip_status=404, unconnected_cause="callee_failed"), "rejected"),
    (FakeCall(sip_status=603, unconnected_cause="callee_failed"), "rejected"),
    (FakeCall(sip_status=503), "failed"),
    (FakeCall(), "failed"),
])
def test_outcomes(call: FakeCall, outcome: str) -> None:
    assert outcome_of(call) == outcome


def test_registries_are_separate() -> None:
    one, two = Metrics(), Metrics()
    one.refused("acl")
    assert samples(two.render())[("sipmask_refusals_total", (("reason", "acl"),))] == 0
    assert samples(one.render())[("sipmask_refusals_total", (("reason", "acl"),))] == 1


def test_every_policy_refusal_counts_under_a_known_reason() -> None:
    # A reason outside the fixed label set made Metrics.refused raise, and the engine's
    # 503 for a flood never left (issue 12 review).
    from sipmask.observability.metrics import REFUSAL_REASONS, Metrics
    from sipmask.policy import rules

    refusals = [rules.PolicyRefusal, *rules.PolicyRefusal.__subclasses__()]
    assert len(refusals) >= 6
    metrics = Metrics()
    for refusal in refusals:
        assert refusal.metric in REFUSAL_REASONS, refusal
        metrics.refused(refusal.metric)


def test_security_counters_reach_metrics() -> None:
    # Issue 12: what the engine keeps from crossing, each TCP/TLS limit and the API's
    # connection limits are counted where an operator can alert on them.
    from sipmask.api.connections import ConnectionCounts

    stats: Counter[str] = Counter({"body_parts_dropped": 3, "header_control_chars": 1,
                                   "calls": 9, "trunk_failover": 2, "info_during_notice": 4,
                                   "requests_during_notice": 1})
    sip = SipCounters(tcp_refused_per_ip=5, tcp_refused_acl=2, tcp_message_timeouts=4,
                      tls_failed=1)
    api = ConnectionCounts(open=2, refused=7, head_timeouts=6)
    got = samples(Metrics(Sources(sip=lambda: sip, engine_stats=lambda: stats,
                                  api_connections=lambda: api)).render())
    tcp = "sipmask_tcp_connections_total"
    assert got[(tcp, (("event", "refused_per_ip"),))] == 5
    assert got[(tcp, (("event", "refused_acl"),))] == 2
    assert got[(tcp, (("event", "message_timeout"),))] == 4
    assert got[(tcp, (("event", "tls_failed"),))] == 1
    dropped = "sipmask_content_dropped_total"
    trunk = "sipmask_trunk_events_total"        # issue 14 §4: failover and probing
    assert got[(trunk, (("event", "failover"),))] == 2
    assert got[(trunk, (("event", "target_down"),))] == 0
    assert got[(dropped, (("what", "body_parts_dropped"),))] == 3
    assert got[(dropped, (("what", "body_untyped"),))] == 0
    assert got[(dropped, (("what", "header_control_chars"),))] == 1
    # Issue 15: what a party sent while a notice played (b2bua/relaying.answer_unbridged).
    assert got[(dropped, (("what", "info_during_notice"),))] == 4
    assert got[(dropped, (("what", "requests_during_notice"),))] == 1
    assert got[("sipmask_api_connections", ())] == 2
    assert got[("sipmask_api_connections_closed_total", (("reason", "refused"),))] == 7
    assert got[("sipmask_api_connections_closed_total", (("reason", "head_timeout"),))] == 6
