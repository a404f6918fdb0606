"""Prometheus metrics for /metrics, in a registry of their own (tests make several).

Two kinds of figures:
- counted here, by the engine and policy: calls by outcome, call setup time, refusals by
  reason (`call_finished`, `count_call`, `observe_setup`, `refused`);
- read at scrape time from the objects that already keep them (`Sources`): SIP transport
  counters, live transactions, active calls, relay packets and drops, media services
  (announcement packets, unplayable announcements, keys heard, recordings started and
  failed, the recording disk thread's queue and drops), store size, event backlog and
  delivery. Reading them on scrape keeps them fresh and costs the packet and message paths
  nothing.

Privacy (DESIGN.md "Privacy contract": a real number never appears in a metric label):
every label value comes from a fixed set below, and `safe_label` refuses any value with a
run of 7 or more digits before it reaches prometheus_client. Values read from the wire (SIP
methods) are mapped onto a fixed set first, with anything else counted as "other".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from sipmask.observability import logging as sm_logging
from sipmask.sip.methods import METHODS
from sipmask.transport.counters import SipCounters

log = sm_logging.get_logger("sipmask.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST

# How a call attempt ended, from leg A's point of view.
OUTCOMES = ("answered", "busy", "no_answer", "cancelled", "rejected", "refused", "failed")
# Why sipmask itself refused a request (CONTRACT "SIP behaviour": 404, 403, 503, 400…).
REFUSAL_REASONS = ("no_binding", "not_allowed", "blacklist", "rate_limited", "acl",
                   "overload", "flood", "direction", "concurrency", "policy", "bad_request",
                   "loop", "refer", "other")
TRANSACTION_KINDS = ("invite_client", "non_invite_client", "invite_server",
                     "non_invite_server")
# Request counts by method: the known ones (sip/methods.py), the rest as "other".
SIP_METHODS = (*METHODS, "other")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "other")
# Received messages are split by kind; sent ones only have a total in SipCounters.
MESSAGE_KINDS = ("request", "response", "all")
# Setup time: sipmask's own work plus the callee's first answer; 1 ms .. 2 s.
SETUP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)

_REFUSED_CAUSES = frozenset({"no_binding", "not_allowed", "blacklist", "rate_limited"})
_BUSY = frozenset({486, 600})
_NO_ANSWER = frozenset({408, 480})
_NUMBER_RUN = re.compile(r"\d{7,}")


class LabelRefused(ValueError):
    """A label value that could carry a number, or is not in its fixed set. The message
    never repeats a number-shaped value."""


def safe_label(value: str, allowed: Collection[str] | None = None) -> str:
    """`value` if it may be a label value: no run of 7+ digits, and in `allowed` if given."""
    run = _NUMBER_RUN.search(value)
    if run is not None:
        raise LabelRefused(f"a label value with a run of {len(run.group())} digits "
                           "looks like a number")
    if allowed is not None and value not in allowed:
        raise LabelRefused(f"label value {value!r} is not one of {', '.join(allowed)}")
    return value


class FinishedCall(Protocol):
    """What `call_finished` reads (b2bua/call.py's Call fits)."""

    @property
    def invite_at(self) -> float: ...
    @property
    def ring_at(self) -> float | None: ...
    @property
    def answer_at(self) -> float | None: ...
    @property
    def sip_status(self) -> int | None: ...
    @property
    def unconnected_cause(self) -> str: ...


def outcome_of(call: FinishedCall) -> str:
    """The call's outcome, one of OUTCOMES."""
    if call.answer_at is not None:
        return "answered"
    if call.unconnected_cause in _REFUSED_CAUSES:
        return "refused"
    status = call.sip_status
    if status == 487:           # RFC 3261 §9.2: A's CANCEL ended the INVITE
        return "cancelled"
    if status in _BUSY:
        return "busy"
    if status in _NO_ANSWER or call.unconnected_cause == "timeout":
        return "no_answer"
    if (status is not None and 300 <= status < 500) or status == 603:
        return "rejected"       # the callee (or its network) declined: 404, 403, 603…
    return "failed"


class RelayStatsLike(Protocol):
    """media/relay.py's RelayStats."""

    @property
    def active_sessions(self) -> int: ...
    @property
    def packets_relayed(self) -> int: ...
    @property
    def bytes_relayed(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def strangers(self) -> int: ...
    @property
    def rtcp_dropped(self) -> int: ...
    @property
    def timeouts(self) -> int: ...
    @property
    def ports_in_use(self) -> int: ...


class MediaServicesLike(Protocol):
    """media/relay.py's ServiceCounters (the embedded relay's, or rtpengine's backend's)."""

    @property
    def prompt_packets(self) -> int: ...
    @property
    def prompts_unplayable(self) -> int: ...
    @property
    def digits(self) -> int: ...
    @property
    def recordings_started(self) -> int: ...
    @property
    def recordings_failed(self) -> int: ...


class RecordingDiskLike(Protocol):
    """media/disk.py's WriterStats."""

    @property
    def queued_bytes(self) -> int: ...
    @property
    def dropped_writes(self) -> int: ...
    @property
    def dropped_bytes(self) -> int: ...


class ApiConnectionsLike(Protocol):
    """api/connections.py's ConnectionCounts."""

    @property
    def open(self) -> int: ...
    @property
    def refused(self) -> int: ...
    @property
    def head_timeouts(self) -> int: ...


# What the engine keeps from crossing to the other leg (engine.stats keys), as label values.
CONTENT_DROPPED = ("body_parts_dropped", "body_untyped", "header_control_chars",
                   "info_during_notice", "requests_during_notice")
# Trunk targets (engine.stats keys `trunk_<event>`, b2bua/failover.py and trunks.py).
TRUNK_EVENTS = ("failover", "late_answer", "no_target", "target_down", "target_up")


class DeliveryStatsLike(Protocol):
    """events/webhook.py's DeliveryStats."""

    @property
    def delivered(self) -> int: ...
    @property
    def failed_attempts(self) -> int: ...


@dataclass
class Sources:
    """Callables read at every scrape; None leaves the family out. Set them as the objects
    that own the figures come up: `metrics.sources.active_calls = lambda: len(engine.calls)`."""

    active_calls: Callable[[], int] | None = None
    transactions: Callable[[], Mapping[str, int]] | None = None   # TransactionLayer.gauges
    sip: Callable[[], SipCounters] | None = None
    relay: Callable[[], RelayStatsLike] | None = None             # Relay.stats
    store_bytes: Callable[[], int] | None = None                  # LmdbStore.disk_bytes
    store_bindings: Callable[[], int] | None = None
    store_loop: Callable[[], Mapping[str, int]] | None = None     # PostgresStore.loop_connected
    event_backlog: Callable[[], int] | None = None                # Outbox.backlog
    events_dropped: Callable[[], int] | None = None               # Outbox.dropped
    event_delivery: Callable[[], DeliveryStatsLike] | None = None
    engine_stats: Callable[[], Mapping[str, int]] | None = None    # Engine.stats
    api_connections: Callable[[], ApiConnectionsLike] | None = None  # api.connection_counts
    media_services: Callable[[], MediaServicesLike] | None = None    # ServiceCounters
    recording_disk: Callable[[], RecordingDiskLike] | None = None    # DiskWriter.stats


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _method(method: str) -> str:
    return method if method in SIP_METHODS else "other"


def _status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status <= 699 else "other"


class _SourceCollector(Collector):
    """Turns `Sources` into metric families at scrape time."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def describe(self) -> list[Metric]:
        # No description up front: the families depend on which sources are set.
        return []

    def collect(self) -> Iterator[Metric]:
        parts: tuple[tuple[str, Callable[[], Iterator[Metric]]], ...] = (
            ("calls", self._calls), ("transactions", self._transactions), ("sip", self._sip),
            ("relay", self._relay), ("media_services", self._media_services),
            ("store", self._store), ("events", self._events), ("engine", self._engine),
            ("api", self._api))
        for name, part in parts:
            try:
                # Built whole before yielding: a source fails all or nothing.
                yield from list(part())
            except Exception:
                # One broken source (or a label refused by safe_label) must not take
                # /metrics down; its families go missing and the log says why.
                log.exception("metrics.source_failed", source=name)

    def _calls(self) -> Iterator[Metric]:
        if self.sources.active_calls is not None:
            yield _gauge("sipmask_active_calls", "Calls in progress.",
                         self.sources.active_calls())

    def _transactions(self) -> Iterator[Metric]:
        if self.sources.transactions is None:
            return
        family = GaugeMetricFamily("sipmask_transactions", "Live SIP transactions by kind.",
                                   labels=["kind"])
        live = self.sources.transactions()
        for kind in TRANSACTION_KINDS:
            family.add_metric([kind], live.get(kind, 0))
        for kind in live:
            safe_label(kind, TRANSACTION_KINDS)
        yield family

    def _sip(self) -> Iterator[Metric]:
        if self.sources.sip is None:
            return
        c = self.sources.sip()
        messages = CounterMetricFamily("sipmask_sip_messages", "SIP messages by direction "
                                       "and kind (sent ones as one total).",
                                       labels=["direction", "kind"])
        messages.add_metric(["in", "request"], sum(c.requests_by_method.values()))
        messages.add_metric(["in", "response"], sum(c.responses_by_status.values()))
        messages.add_metric(["out", "all"], c.sent)
        yield messages
        requests = CounterMetricFamily("sipmask_sip_requests_received",
                                       "SIP requests received by method.", labels=["method"])
        by_method = dict.fromkeys(SIP_METHODS, 0)
        for method, n in c.requests_by_method.items():
            by_method[_method(method)] += n
        for method, n in by_method.items():
            requests.add_metric([safe_label(method, SIP_METHODS)], n)
        yield requests
        responses = CounterMetricFamily("sipmask_sip_responses_received",
                                        "SIP responses received by status class.",
                                        labels=["class"])
        by_class = dict.fromkeys(STATUS_CLASSES, 0)
        for status, n in c.responses_by_status.items():
            by_class[_status_class(status)] += n
        for status_class, n in by_class.items():
            responses.add_metric([status_class], n)
        yield responses
        yield _counter("sipmask_sip_parse_errors", "SIP messages that failed to parse.",
                       c.parse_errors)
        yield _counter("sipmask_sip_too_large", "SIP messages over sip.max_message_bytes.",
                       c.too_large)
        yield _counter("sipmask_sip_dropped", "SIP messages dropped without an answer.",
                       c.dropped)
        yield _counter("sipmask_sip_send_errors", "SIP messages a socket would not send.",
                       c.send_errors)
        yield _counter("sipmask_internal_errors", "Exceptions caught in a transport shell.",
                       c.internal_errors)
        tcp = CounterMetricFamily("sipmask_tcp_connections", "SIP TCP connection events.",
                                  labels=["event"])
        tcp.add_metric(["accepted"], c.tcp_accepted)
        tcp.add_metric(["refused"], c.tcp_refused)
        tcp.add_metric(["idle_closed"], c.tcp_idle_closed)
        tcp.add_metric(["refused_per_ip"], c.tcp_refused_per_ip)
        tcp.add_metric(["refused_acl"], c.tcp_refused_acl)
        tcp.add_metric(["message_timeout"], c.tcp_message_timeouts)
        tcp.add_metric(["tls_failed"], c.tls_failed)
        yield tcp

    def _engine(self) -> Iterator[Metric]:
        if self.sources.engine_stats is None:
            return
        stats = self.sources.engine_stats()
        family = CounterMetricFamily(
            "sipmask_content_dropped", "Bodies, body parts and header fields kept from "
            "crossing to the other leg (what): non-SDP bodies and multipart parts, bodies "
            "without Content-Type, header values with control characters, INFOs and other "
            "requests answered by sipmask while a notice played.", labels=["what"])
        for what in CONTENT_DROPPED:
            family.add_metric([what], stats.get(what, 0))
        yield family
        trunks = CounterMetricFamily(
            "sipmask_trunk_events", "Trunk targets (event): a leg-B INVITE sent on to the "
            "next target, a late 2xx of an abandoned attempt hung up, a call with no target "
            "to try (503), a target probing took out or back.", labels=["event"])
        for event in TRUNK_EVENTS:
            trunks.add_metric([event], stats.get(f"trunk_{event}", 0))
        yield trunks

    def _api(self) -> Iterator[Metric]:
        if self.sources.api_connections is None:
            return
        c = self.sources.api_connections()
        yield _gauge("sipmask_api_connections", "Open HTTP API connections.", c.open)
        closed = CounterMetricFamily(
            "sipmask_api_connections_closed", "HTTP API connections closed by a limit: past "
            "api.max_connections (refused) or no whole head within api.header_timeout_s "
            "(head_timeout).", labels=["reason"])
        closed.add_metric(["refused"], c.refused)
        closed.add_metric(["head_timeout"], c.head_timeouts)
        yield closed

    def _relay(self) -> Iterator[Metric]:
        if self.sources.relay is None:
            return
        r = self.sources.relay()
        yield _gauge("sipmask_media_sessions", "Relay sessions open.", r.active_sessions)
        yield _gauge("sipmask_media_ports_in_use", "Relay ports bound.", r.ports_in_use)
        yield _counter("sipmask_relay_packets", "RTP and RTCP packets relayed.",
                       r.packets_relayed)
        yield _counter("sipmask_relay_bytes", "RTP and RTCP bytes relayed.", r.bytes_relayed)
        dropped = CounterMetricFamily(
            "sipmask_relay_dropped", "Packets not relayed: no peer yet (no_peer); from an "
            "address the call's SDP and SIP never named (stranger, media.latching); from a "
            "signalled address while another port holds the latch (wrong_source); RTCP that "
            "does not parse, or SRTCP, which cannot be scrubbed (rtcp).", labels=["reason"])
        dropped.add_metric(["no_peer"], r.dropped)
        dropped.add_metric(["stranger"], r.strangers)
        dropped.add_metric(["wrong_source"], r.rejected)
        dropped.add_metric(["rtcp"], r.rtcp_dropped)
        yield dropped
        yield _counter("sipmask_media_timeouts", "Calls ended for lack of RTP.", r.timeouts)

    def _media_services(self) -> Iterator[Metric]:
        if self.sources.media_services is not None:
            m = self.sources.media_services()
            yield _counter("sipmask_media_prompt_packets",
                           "RTP packets of announcements sent.", m.prompt_packets)
            yield _counter("sipmask_media_prompts_unplayable", "Announcements not played: the "
                           "leg has no PCMU/PCMA or no address yet.", m.prompts_unplayable)
            yield _counter("sipmask_media_digits", "Keys heard in media (RFC 4733 events and "
                           "in-band tones).", m.digits)
            yield _counter("sipmask_recordings_started", "Call recordings started.",
                           m.recordings_started)
            yield _counter("sipmask_recordings_failed", "Call recordings that failed: the file "
                           "could not be made or written (the call went on; its CDR names "
                           "no recording).", m.recordings_failed)
        if self.sources.recording_disk is not None:
            d = self.sources.recording_disk()
            yield _gauge("sipmask_recording_queue_bytes", "Recorded audio waiting for the "
                         "disk thread.", d.queued_bytes)
            yield _counter("sipmask_recording_writes_dropped", "Recording writes dropped by a "
                           "full disk queue (written back as silence).", d.dropped_writes)
            yield _counter("sipmask_recording_dropped_bytes", "Octets of recorded audio "
                           "dropped by a full disk queue.", d.dropped_bytes)

    def _store(self) -> Iterator[Metric]:
        if self.sources.store_bytes is not None:
            yield _gauge("sipmask_store_bytes", "Bytes the LMDB store's pages use.",
                         self.sources.store_bytes())
        if self.sources.store_bindings is not None:
            yield _gauge("sipmask_store_bindings", "Bindings in the store.",
                         self.sources.store_bindings())
        if self.sources.store_loop is not None:
            loop = GaugeMetricFamily(
                "sipmask_store_loop_connected", "PostgreSQL: 1 while the event loop's own "
                "connection is up (lookups; CDR and journal batches); 0: that work goes "
                "to threads, slower under load.", labels=["connection"])
            for name, up in sorted(self.sources.store_loop().items()):
                loop.add_metric([name], up)
            yield loop

    def _events(self) -> Iterator[Metric]:
        if self.sources.event_backlog is not None:
            yield _gauge("sipmask_event_backlog", "Events waiting for the webhook's 2xx.",
                         self.sources.event_backlog())
        if self.sources.events_dropped is not None:
            yield _counter("sipmask_events_dropped",
                           "Undelivered events dropped by the events.outbox_max cap.",
                           self.sources.events_dropped())
        if self.sources.event_delivery is not None:
            d = self.sources.event_delivery()
            yield _counter("sipmask_events_delivered", "Events acknowledged by the webhook.",
                           d.delivered)
            yield _counter("sipmask_event_delivery_failures",
                           "Webhook POSTs without a 2xx (status, refused, timeout).",
                           d.failed_attempts)


class Metrics:
    """The process's metrics. `render()` is the /metrics body (`CONTENT_TYPE`)."""

    def __init__(self, sources: Sources | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.sources = sources or Sources()
        self._calls = Counter("sipmask_calls", "Call attempts by outcome.", ["outcome"],
                              registry=self.registry)
        self._setup = Histogram("sipmask_call_setup_seconds", "INVITE from A to the first "
                                "ringing or answer relayed back (post-dial delay).",
                                buckets=SETUP_BUCKETS, registry=self.registry)
        self._refusals = Counter("sipmask_refusals", "Requests sipmask refused, by reason.",
                                 ["reason"], registry=self.registry)
        # Children made up front: every label value shows (at 0) from the first scrape, and
        # the hot path does a dict lookup instead of prometheus_client's labels().
        self._by_outcome = {o: self._calls.labels(safe_label(o)) for o in OUTCOMES}
        self._by_reason = {r: self._refusals.labels(safe_label(r)) for r in REFUSAL_REASONS}
        self.registry.register(_SourceCollector(self.sources))

    def count_call(self, outcome: str) -> None:
        safe_label(outcome, OUTCOMES)
        self._by_outcome[outcome].inc()

    def observe_setup(self, seconds: float) -> None:
        self._setup.observe(seconds)

    def call_finished(self, call: FinishedCall) -> None:
        """Engine hook: count the outcome and, if B rang or answered, the setup time."""
        self.count_call(outcome_of(call))
        first = call.ring_at if call.ring_at is not None else call.answer_at
        if first is not None:
            self.observe_setup(max(0.0, first - call.invite_at))

    def refused(self, reason: str) -> None:
        safe_label(reason, REFUSAL_REASONS)
        self._by_reason[reason].inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
