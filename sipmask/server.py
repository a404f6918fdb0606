"""`sipmask serve`: the listeners, the SIP core between them, and the request handler seam.

    sockets ─► transport/udp, tcp (tls) ─► SipServer.message_received ─► TransactionLayer
                                                                          │ events()
                                           RequestHandler.handle_request ◄┘ (B2BUA here)
    sockets ◄─ transport/udp, tcp (tls) ◄─ SipServer._flush ◄── TransactionLayer.outgoing()

The transaction layer is sans-IO (aioquic style): the server passes it `now` (the loop's
clock), drains its events and outgoing messages after every call, and keeps one
`loop.call_at` armed no later than `next_timer()` (a deadline that moved later leaves the
armed one in place: it wakes once, finds nothing due and arms again).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import resource
import secrets
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aiohttp import web

from sipmask import _compiled
from sipmask.api.app import cdrs_from_log, connection_counts, reconfigure_api, start_api
from sipmask.b2bua import routing
from sipmask.b2bua.engine import Engine
from sipmask.cdr.record import Cdr
from sipmask.cdr.store import HEARTBEAT_S, STALE_S, CdrLog
from sipmask.clock import SystemClock
from sipmask.config import loader
from sipmask.config.reload import ReloadPlan
from sipmask.config.reload import plan as reload_plan
from sipmask.config.schema import Config, Endpoint, TrunkUri
from sipmask.errors import ConfigError, StoreError
from sipmask.events.outbox import Outbox, new_event
from sipmask.events.webhook import WebhookDelivery
from sipmask.events.webhook import from_config as webhook_from_config
from sipmask.media.backend import MediaBackend
from sipmask.observability import logging as sm_logging
from sipmask.observability.metrics import Metrics
from sipmask.policy import CallPolicy
from sipmask.sip.message import Request, Response, build_response
from sipmask.sip.methods import no_dialog_status
from sipmask.sip.timers import TimerConfig
from sipmask.sip.transaction import (
    Outgoing,
    RequestReceived,
    ResponseReceived,
    StrayResponse,
    TransactionLayer,
    TUEvent,
)
from sipmask.sip.transports import Address
from sipmask.sip.transports import Transport as TransportName
from sipmask.sip.uri import NameAddr
from sipmask.store import open_store, recordings
from sipmask.transport.counters import SipCounters
from sipmask.transport.resolver import SystemDns
from sipmask.transport.tcp import InboundLimits, TcpTransport, open_tcp
from sipmask.transport.tls import TlsContexts, load_contexts
from sipmask.transport.udp import UdpTransport, open_udp

if TYPE_CHECKING:
    from sipmask.store.lmdb import AnyStore

EXIT_OK, EXIT_FAILED = 0, 1
SWEEP_BATCH = 1000      # records the sweeps delete per transaction

# Lazy proxy: bound at first use, so `sipmask.observability.logging.setup` applies.
log = sm_logging.get_logger("sipmask.server")


# -- the handler seam -------------------------------------------------------------------
class SipActions(Protocol):
    """What a request handler may do; SipServer implements it. Each call goes through the
    transaction layer and what it produces is sent before the call returns, unless the
    server is `delivering` (inside its drain: sent when the handler returns) or the handler
    called `hold()`: then it all goes at `flush()`, once for a batch of actions. A
    send that fails comes back as an event (TransportFailed) after the handler returned,
    never inside the call, before the handler could note the transaction it started
    (DESIGN rule 15). `send_request` takes the Via branch the handler chose (its txn id
    follows from it: transaction.client_key), or picks one."""

    def respond(self, txn_id: str, response: Response) -> None: ...
    def send_request(self, request: Request, dest: Address, transport: TransportName, *,
                     branch: str | None = None) -> str: ...
    def cancel(self, invite_txn_id: str) -> str | None: ...
    def send_ack(self, invite_txn_id: str | None, ack: Request, dest: Address,
                 transport: TransportName) -> None: ...
    delivering: bool
    def hold(self) -> None: ...
    def flush(self) -> None: ...


class RequestHandler(Protocol):
    """The B2BUA plugs in here: it gets every event the transaction layer delivers."""

    def handle_request(self, event: RequestReceived) -> None:
        """A new request in its server transaction; answer with `actions.respond`."""
    def handle_response(self, event: ResponseReceived | StrayResponse) -> None:
        """A response to a request the handler sent (or one no transaction matches)."""
    def handle_event(self, event: TUEvent) -> None:
        """Everything else: ACK for a 2xx, CANCEL (already answered), timeouts, transport
        failures, terminated transactions."""


HandlerFactory = Callable[[SipActions], RequestHandler]

URI_SCHEMES = frozenset({"sip", "sips", "tel"})


class DefaultHandler:
    """What sipmask answers with no B2BUA attached: OPTIONS 200, everything else refused
    with the status RFC 3261 gives for it."""

    def __init__(self, actions: SipActions, *, allow: tuple[str, ...] = ("OPTIONS", "ACK"),
                 supported: tuple[str, ...] = (), accept: str = "application/sdp") -> None:
        self.actions = actions
        self.allow = ", ".join(allow)
        self.supported = supported
        self.accept = accept
        self.tag_prefix = secrets.token_hex(4)
        self._tags = itertools.count(1)

    def to_tag(self) -> str:
        return f"{self.tag_prefix}{next(self._tags):x}"

    def handle_request(self, event: RequestReceived) -> None:
        # ACK and CANCEL never arrive here: the transaction layer absorbs the one and
        # answers the other (§17.2.1, §9.2).
        request = event.request
        status, extra = self.decide(request)
        response = build_response(request, status, to_tag=self.to_tag(), extra=extra)
        self.actions.respond(event.txn_id, response)

    def decide(self, request: Request) -> tuple[int, tuple[tuple[str, str], ...]]:
        method = request.method
        scheme = request.uri.partition(":")[0].lower()
        if scheme not in URI_SCHEMES:
            return 416, ()  # §8.2.2.1
        if method != "CANCEL":
            required = [t.strip() for t in request.headers.get_all("require") if t.strip()]
            unsupported = [t for t in required if t not in self.supported]
            if unsupported:
                return 420, (("Unsupported", ", ".join(unsupported)),)  # §8.2.2.3
        if method == "OPTIONS":
            # §11.2: the answer lists what we can do.
            return 200, (("Allow", self.allow), ("Accept", self.accept),
                         ("Supported", ", ".join(self.supported)))
        status = no_dialog_status(method, _has_to_tag(request))
        return status, ((("Allow", self.allow),) if status != 481 else ())

    def handle_response(self, event: ResponseReceived | StrayResponse) -> None:
        log.debug("sip.stray_response", status=event.response.status, source=event.source)

    def handle_event(self, event: TUEvent) -> None:
        return None


def _has_to_tag(request: Request) -> bool:
    try:
        return NameAddr.parse(request.headers.get("to") or "").tag is not None
    except Exception:
        return False


# -- the server -------------------------------------------------------------------------
class ListenError(Exception):
    """The SIP side cannot start: a listen socket (OSError) or the TLS settings it needs
    (ConfigError, naming the key). str() is the one line `sipmask serve` prints."""

    def __init__(self, endpoint: Endpoint | TrunkUri, cause: OSError | ConfigError) -> None:
        self.endpoint = endpoint
        self.cause = cause
        if isinstance(cause, ConfigError):
            super().__init__(f"config error: {cause}")
        else:
            super().__init__(f"cannot listen on {endpoint}: {cause.strerror or cause}")


def transaction_layer(config: Config) -> TransactionLayer:
    """The core for `config`: RFC 3261 timers from `sip.timers`; the Via sipmask puts on
    requests it sends names `sip.advertise` and the port of the first listener of the
    request's transport (the first UDP, else the first listen port, for one without)."""
    timers = config.sip.timers
    ports: dict[str, int] = {}
    for endpoint in config.sip.listen:
        ports.setdefault(endpoint.transport, endpoint.port)
    first = config.sip.listen[0].port if config.sip.listen else 5060
    return TransactionLayer(TimerConfig.from_ms(timers.t1_ms, timers.t2_ms, timers.t4_ms),
                            local_via_host=config.sip.advertise,
                            local_port=ports.get("udp", first), via_ports=ports)


def trunk_sources(config: Config) -> Callable[[str], bool]:
    """Whether a host is in some trunk's `inbound_allow`: the only peers that may open SIP
    connections to sipmask (checked at accept; the engine picks the trunk by the same rule,
    routing.trunk_for)."""
    return lambda host: routing.trunk_for(config.trunks, host)[0] is not None


def tls_contexts(config: Config) -> TlsContexts | None:
    """The TLS contexts when any listener or trunk speaks TLS, else None. Raises
    ListenError (with the ConfigError naming the key) before any socket is opened."""
    listeners = [e for e in config.sip.listen if e.transport == "tls"]
    trunks = [(name, uri) for name, trunk in config.trunks.items()
              for uri in trunk.outbound if uri.transport == "tls"]
    if not listeners and not trunks:
        return None
    try:
        if not listeners:
            name, outbound = trunks[0]
            # The trunk's requests back (BYE, re-INVITE) go to our Contact: a TLS one.
            raise ConfigError(f"trunks.{name}.outbound", "",
                              f"{outbound} needs a tls:// address in sip.listen")
        return load_contexts(config.sip.tls)
    except ConfigError as exc:
        raise ListenError(listeners[0] if listeners else trunks[0][1], exc) from None


@dataclass
class SipServer:
    """Owns the listeners, the transaction layer and the handler; one per process."""

    config: Config
    handler_factory: HandlerFactory = DefaultHandler
    counters: SipCounters = field(default_factory=SipCounters)

    def __post_init__(self) -> None:
        self.core = transaction_layer(self.config)
        self.handler = self.handler_factory(self)
        self.udp: list[UdpTransport] = []
        self.tcp: list[TcpTransport] = []
        self.tls: list[TcpTransport] = []     # TcpTransport with TLS contexts
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Inside _deliver: its loop takes new events, and the drain sends what the handler
        # produced once the handler returned (a handler's sends are held meanwhile).
        self.delivering = False
        self._drain_handle: asyncio.Handle | None = None
        self.limits: InboundLimits | None = None      # shared by the TCP/TLS listeners
        self._held = False                      # the handler's sends wait for flush()

    async def start(self) -> list[str]:
        """Open every `sip.listen` endpoint; returns their URLs. Raises ListenError."""
        self._loop = asyncio.get_running_loop()
        sip = self.config.sip
        max_bytes = sip.max_message_bytes
        tls = tls_contexts(self.config)
        # One for every TCP and TLS listener: an IP's share counts across them all.
        limits = self.limits = InboundLimits(sip.tcp_max_connections, sip.tcp_max_per_ip,
                                             trunk_sources(self.config))
        urls: list[str] = []
        for endpoint in sip.listen:
            try:
                if endpoint.transport == "udp":
                    udp = await open_udp(endpoint, self, self.counters, max_bytes)
                    self.udp.append(udp)
                    host, port = udp.local
                else:
                    stream = await open_tcp(
                        endpoint, self, self.counters, max_bytes,
                        idle_timeout=float(sip.tcp_idle_timeout_s),
                        message_timeout=float(sip.tcp_message_timeout_s), limits=limits,
                        tls=tls if endpoint.transport == "tls" else None)
                    self._streams(endpoint.transport).append(stream)
                    host, port = stream.local
            except OSError as exc:
                self.close()
                raise ListenError(endpoint, exc) from None
            urls.append(str(Endpoint(endpoint.transport, host, port)))
        return urls

    # MessageSink: the transports call this for every parsed message.
    def message_received(self, message: Request | Response, source: Address,
                         transport: TransportName) -> None:
        self.core.receive(message, source, transport, self._now())
        self._drain()

    def transport_failed(self, dest: Address, transport: TransportName) -> None:
        """A shell could not deliver to `dest` (§17.1.4, §17.2.4)."""
        self.core.transport_error(dest, transport, self._now())
        self._drain()

    # SipActions
    def respond(self, txn_id: str, response: Response) -> None:
        self.core.send_response(txn_id, response, self._now())
        if not (self._held or self.delivering):
            self._flush(from_handler=True)

    def reconfigure(self, config: Config) -> None:
        """A reload: the trunk ACL at TCP/TLS accept follows the new trunks."""
        self.config = config
        if self.limits is not None:
            self.limits.allow = trunk_sources(config)

    def local_port(self, transport: TransportName) -> int:
        """The port sipmask listens on for `transport` (for Contact headers)."""
        shells: list[UdpTransport] | list[TcpTransport] = self.udp if transport == "udp" \
            else self._streams(transport)
        if shells:
            return shells[0].local[1]
        return self.config.sip.listen[0].port

    def connected(self, dest: Address, transport: TransportName) -> bool:
        """Whether a TCP/TLS connection with `dest` is open (RFC 5923's practice: requests
        to a party reuse the connection its dialog came in on while it is open; `send`
        writes on it)."""
        if transport == "udp":
            return False
        return any(dest in shell.connections for shell in self._streams(transport))

    def _streams(self, transport: TransportName) -> list[TcpTransport]:
        return self.tls if transport == "tls" else self.tcp

    def send_request(self, request: Request, dest: Address, transport: TransportName, *,
                     branch: str | None = None) -> str:
        txn_id = self.core.send_request(request, dest, transport, self._now(), branch=branch)
        if not (self._held or self.delivering):
            self._flush(from_handler=True)
        return txn_id

    def cancel(self, invite_txn_id: str) -> str | None:
        txn_id = self.core.cancel(invite_txn_id, self._now())
        if not (self._held or self.delivering):
            self._flush(from_handler=True)
        return txn_id

    def send_ack(self, invite_txn_id: str | None, ack: Request, dest: Address,
                 transport: TransportName) -> None:
        self.core.send_ack(invite_txn_id, ack, dest, transport)
        if not (self._held or self.delivering):
            self._flush(from_handler=True)

    def hold(self) -> None:
        """The handler's sends from now on wait for flush() (a batch of its actions)."""
        self._held = True

    def flush(self) -> None:
        """Send what the handler's actions produced, and stop holding."""
        self._held = False
        self._flush(from_handler=True)

    def _now(self) -> float:
        # The loop's clock, so `now` and loop.call_at agree (aioquic does the same).
        assert self._loop is not None
        return self._loop.time()

    def _drain_soon(self) -> None:
        """Deliver the core's events once the handler call that caused them has returned
        (aioquic's _transmit_soon): inside a drain, its loop picks them up; otherwise one
        loop callback. A send refused at once so reaches the handler as an event it can
        match, never inside the call that started the transaction (DESIGN rule 15)."""
        if self.delivering or self._drain_handle is not None or self._loop is None:
            return
        self._drain_handle = self._loop.call_soon(self._drain_scheduled)

    def _drain_scheduled(self) -> None:
        self._drain_handle = None
        self._drain()

    def _drain(self) -> None:
        """Hand the core's events to the handler, then send what the core produced."""
        core = self.core
        events = core.events()
        outer, self.delivering = self.delivering, True
        try:
            self._deliver(events)
        finally:
            self.delivering = outer
        self._flush()

    def _deliver(self, events: list[TUEvent]) -> None:
        core = self.core
        while events:
            handler = self.handler
            for event in events:
                # Dispatch on the exact type (the event classes are final): cheaper than an
                # isinstance chain, and most events are requests and responses.
                kind = type(event)
                try:
                    if kind is RequestReceived:
                        handler.handle_request(event)  # type: ignore[arg-type]
                    elif kind is ResponseReceived or kind is StrayResponse:
                        handler.handle_response(event)  # type: ignore[arg-type]
                    else:
                        handler.handle_event(event)
                except Exception:
                    self.counters.internal_errors += 1
                    # Not `event=`: structlog's first argument is the event already.
                    log.exception("sip.handler_failed", event_type=kind.__name__)
                    if isinstance(event, RequestReceived):
                        self._answer_500(event)
            events = core.events()

    def _answer_500(self, event: RequestReceived) -> None:
        """A handler that failed must not leave its server transaction open forever."""
        try:
            response = build_response(event.request, 500, to_tag=secrets.token_hex(4))
            self.core.send_response(event.txn_id, response, self._now())
        except Exception:
            pass  # already answered (TransactionError) or unanswerable: nothing more to do

    def _flush(self, *, from_handler: bool = False) -> None:
        """Send what the core produced. Sends refused at once fail their transactions in
        the core; the events that makes go to the handler now, or, when the handler itself
        asked for this send (`from_handler`), after it returned (_drain_soon)."""
        failed: list[Outgoing] = []
        for out in self.core.outgoing():
            if not self.send(out.data, out.dest, out.transport):
                failed.append(out)
        for out in failed:
            self.core.transport_error(out.dest, out.transport, self._now())
        if not failed:
            self._arm_timer()
        elif from_handler:
            self._drain_soon()
        else:
            self._drain()

    def send(self, data: bytes, dest: Address, transport: TransportName) -> bool:
        """Hand bytes to a shell; False when it refused them at once. On TCP and TLS the
        shell that holds a connection with `dest` writes on it (whichever listener it came
        in on); with none, the first one opens a connection."""
        if transport == "udp":
            if self.udp:
                return self.udp[0].send(data, dest)
        else:
            shells = self._streams(transport)
            if shells:
                shell = shells[0]
                if len(shells) > 1:
                    shell = next((s for s in shells if dest in s.connections), shell)
                shell.send(data, dest)
                return True
        self.counters.send_errors += 1
        return False

    def _arm_timer(self) -> None:
        """Keep the one loop timer armed no later than the core's next deadline. Armed
        lazily: a deadline that moved later (its timer was stopped, its transaction ended)
        leaves the armed one, which fires early, finds nothing due and arms again
        (_on_timer) — one spare wake-up instead of a cancel and a call_at per stop. An
        earlier deadline re-arms at once, so no RFC 3261 timer fires late."""
        when = self.core.next_timer()
        armed = self._timer_at
        if when is None or (armed is not None and armed <= when) or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        try:
            self.core.handle_timer(self._now())
        except Exception:
            self.counters.internal_errors += 1
            log.exception("sip.timer_failed")
        self._drain()

    def close(self) -> None:
        if self._drain_handle is not None:
            self._drain_handle.cancel()
            self._drain_handle = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        for udp in self.udp:
            udp.close()
        for stream in (*self.tcp, *self.tls):
            stream.close()


# -- the services around SIP: store, CDRs, media, the engine, the HTTP API ---------------
def build_media(config: Config, on_timeout: Callable[[str], None]) -> MediaBackend:
    """The media backend `media.backend` names (imported on demand)."""
    if config.media.backend == "rtpengine":
        from sipmask.media.rtpengine import RtpengineBackend
        rtpengine = config.media.rtpengine
        return RtpengineBackend(config.media, on_timeout=on_timeout,
                                dtmf_listen=rtpengine.dtmf_log,
                                recording_dir=rtpengine.recording_dir,
                                prompt_dir=rtpengine.prompt_dir)
    from sipmask.media.embedded import EmbeddedBackend
    return EmbeddedBackend(config.media, on_timeout=on_timeout)


@dataclass
class Services:
    """Everything `sipmask serve` runs beside the SIP listeners."""

    config: Config
    store: AnyStore
    cdrs: CdrLog
    media: MediaBackend
    engines: list[Engine] = field(default_factory=list)   # the one SipServer made
    outbox: Outbox | None = None
    delivery: WebhookDelivery | None = None
    metrics: Metrics = field(default_factory=Metrics)
    policy: CallPolicy | None = None      # who may call (policy/); shared by the engines
    api: web.AppRunner | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def open(cls, config: Config) -> Services:
        store = open_store(config)
        engines: list[Engine] = []

        def media_timeout(call_id: str) -> None:
            # The relay exists before the engine (the server makes the engine); it reports
            # silent calls to whichever engine is running by then.
            for engine in engines:
                engine.media_timeout(call_id)
        media = build_media(config, on_timeout=media_timeout)
        services = cls(config, store, CdrLog(store, node=config.sip.node), media, engines)
        services.outbox = Outbox(store, config.events.outbox_max)
        services.policy = CallPolicy(config, SystemClock())
        services.delivery = webhook_from_config(config.events.webhook, services.outbox)
        sources = services.metrics.sources
        sources.store_bytes = store.disk_bytes
        sources.store_loop = getattr(store, "loop_connected", None)     # PostgreSQL
        sources.event_backlog = services.outbox.backlog
        outbox = services.outbox
        sources.events_dropped = lambda: outbox.dropped
        delivery = services.delivery
        if delivery is not None:
            sources.event_delivery = lambda: delivery.stats
        relay = getattr(media, "relay", None)
        if relay is not None:
            sources.relay = relay.stats
            sources.recording_disk = lambda: relay.disk.stats
        counters = relay.services if relay is not None else getattr(media, "services", None)
        if counters is not None:
            sources.media_services = lambda: counters
        return services

    @property
    def engine(self) -> Engine | None:
        return self.engines[0] if self.engines else None

    def engine_factory(self, actions: SipActions) -> Engine:
        # Events are written to the outbox only when a webhook will deliver them.
        engine = Engine(actions, config=self.config, store=self.store,  # type: ignore[arg-type]
                        media=self.media, cdrs=self.cdrs, clock=SystemClock(),
                        events=self.outbox if self.delivery is not None else None,
                        policy=self.policy, metrics=self.metrics, dns=SystemDns())
        self.engines.append(engine)
        self.metrics.sources.active_calls = lambda: engine.active_calls
        self.metrics.sources.engine_stats = lambda: engine.stats
        return engine

    def watch(self, server: SipServer) -> None:
        """Metrics read from the SIP side: transaction gauges and message counters."""
        self.metrics.sources.transactions = server.core.gauges
        self.metrics.sources.sip = lambda: server.counters

    def repair(self) -> None:
        """At start-up: close the calls a killed predecessor or a dead peer node sharing
        the store left up (CDRs with release_side sipmask)."""
        self._repaired(self.cdrs.repair(SystemClock().wall()))

    def _repaired(self, fixed: list[Cdr]) -> None:
        if fixed:
            log.warning("cdr.repaired_after_crash", calls=len(fixed))
            if self.delivery is not None and self.outbox is not None:
                for record in fixed:
                    self.outbox.enqueue(new_event(
                        "cdr", call_id=record.call_id, binding_id=record.binding_id,
                        tenant=record.tenant, x=record.x, at=record.end_at or 0.0,
                        cdr=record))

    async def _heartbeat(self) -> None:
        # On a thread, not the loop: a write transaction waits for LMDB's writer lock,
        # which the CDR writer holds through its fsync (tens of ms on a slow disk).
        clock = SystemClock()
        beats = 0
        while True:
            try:
                await asyncio.to_thread(self.cdrs.heartbeat, clock.wall())
                beats += 1
                if beats % int(STALE_S / HEARTBEAT_S) == 0:
                    # Peers sharing the store that died.
                    self._repaired(await asyncio.to_thread(
                        self.cdrs.repair, clock.wall(), own=False))
            except Exception:
                log.exception("cdr.heartbeat_failed")
            await asyncio.sleep(HEARTBEAT_S)

    async def start(self) -> None:
        self.repair()
        self.tasks.append(asyncio.create_task(self._heartbeat()))
        self.api = await start_api(self.config, self.store, metrics_text=self.metrics.render,
                                   cdr_source=cdrs_from_log(self.cdrs))
        if self.api is not None:
            counts = connection_counts(self.api)
            self.metrics.sources.api_connections = lambda: counts
        self.tasks.append(asyncio.create_task(self._sweep()))
        if self.delivery is not None:
            self.delivery.start()
        if self.policy is not None:
            self.policy.start()     # the loop-lag monitor behind overload refusals
        for engine in self.engines:
            engine.trunks.start()   # DNS for the trunks' names, OPTIONS probes (b2bua/trunks.py)

    async def _sweep(self) -> None:
        """Every store.sweep_interval_s: expired bindings (they already stop routing, as
        route() checks expires_at), CDRs past cdr.retention_days and recordings past
        recording.retention_days are removed from disk.
        On a thread (see _heartbeat), SWEEP_BATCH records per transaction, so a big backlog
        never holds LMDB's writer lock (and the CDR writer behind it) for long."""
        clock = SystemClock()
        while True:
            await asyncio.sleep(self.config.store.sweep_interval_s)
            try:
                while await asyncio.to_thread(self.store.sweep, clock.wall(),
                                              SWEEP_BATCH) >= SWEEP_BATCH:
                    pass
            except Exception:
                log.exception("store.sweep_failed")
            try:
                await self._sweep_cdrs(clock.wall())
            except Exception:
                log.exception("cdr.sweep_failed")
            try:
                # Recordings past recording.retention_days (store/recordings.py).
                while await asyncio.to_thread(recordings.sweep, self.config.recording,
                                              clock.wall(), SWEEP_BATCH) >= SWEEP_BATCH:
                    pass
            except Exception:
                log.exception("recording.sweep_failed")

    async def _sweep_cdrs(self, now: float) -> int:
        """CDRs invited more than cdr.retention_days ago (0: kept for ever)."""
        days = self.config.cdr.retention_days
        if not days:
            return 0
        before = now - days * 86400.0
        removed = 0
        while True:
            done = await asyncio.to_thread(self.cdrs.sweep, before, SWEEP_BATCH)
            removed += done
            if done < SWEEP_BATCH:
                break
        if removed:
            log.info("cdr.swept", removed=removed, retention_days=days)
        return removed

    def reload(self, loaded: Config, server: SipServer) -> ReloadPlan:
        """`sipmask reload` / SIGHUP: take what a running node can (config/reload.py) and
        name what waits for a restart. Calls in progress go on; new calls see the new
        config."""
        result = reload_plan(self.config, loaded)
        if not result.changed:
            return result
        config = result.config
        sm_logging.setup(config.log, secrets=sm_logging.config_secrets(config))
        self.config = config
        server.reconfigure(config)
        for engine in self.engines:
            engine.reconfigure(config)
        if self.policy is not None:
            self.policy.reconfigure(config)
        self.store.sync_tenants(config.tenants)
        if self.api is not None:
            reconfigure_api(self.api, config)
        return result

    async def drain(self, timeout: float) -> None:
        """SIGTERM: no new calls, running ones finish up to `timeout`, then BYE both ways."""
        engine = self.engine
        if engine is None:
            return
        engine.start_drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while engine.active_calls and loop.time() < deadline:
            await asyncio.sleep(0.1)
        if engine.active_calls:
            log.info("sipmask.drain_timeout", calls=engine.active_calls)
            engine.end_all()
            # The BYEs get a few seconds for their answers (each gives up on its own, §17.1.2).
            deadline = loop.time() + 5.0
            while engine.active_calls and loop.time() < deadline:
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for engine in self.engines:
            await engine.trunks.close()
        if self.delivery is not None:
            await self.delivery.stop()
        if self.policy is not None:
            await self.policy.stop()
        if self.api is not None:
            await self.api.cleanup()
        with contextlib.suppress(Exception):
            await self.media.close()
        self.store.close()


# -- entry point ----------------------------------------------------------------------------
async def serve(config: Config, load: Callable[[], Config] | None = None) -> int:
    """Run a node until SIGTERM/SIGINT. `load` reads the config again (SIGHUP reloads)."""
    try:
        services = Services.open(config)
    except (StoreError, OSError) as exc:
        # A PostgreSQL error names its host itself (never the DSN: it may hold a password).
        where = f" at {config.store.path}" if config.store.backend == "lmdb" else ""
        print(f"sipmask: cannot open the store{where}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    server = SipServer(config, handler_factory=services.engine_factory)
    services.watch(server)
    try:
        urls = await server.start()
    except ListenError as exc:
        print(f"sipmask: {exc}", file=sys.stderr, flush=True)
        await services.close()
        return EXIT_FAILED
    try:
        await services.media.start()
    except OSError as exc:
        server.close()
        await services.close()
        print(f"sipmask: cannot listen for rtpengine's DTMF log on "
              f"{config.media.rtpengine.dtmf_log} (media.rtpengine.dtmf_log): "
              f"{exc.strerror or exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    try:
        await services.start()
    except OSError as exc:
        server.close()
        await services.close()
        print(f"sipmask: cannot start the admin API on {config.api.listen}: "
              f"{exc.strerror or exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    freezer = GcFreezer(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if load is not None:
        loop.add_signal_handler(signal.SIGHUP, reload_on_signal, services, server, load)
    pid_file = write_pid_file(config.sip.pid_file)
    print(f"sipmask listening on {', '.join(urls)}", flush=True)
    log.info("sipmask.started", listen=urls, api=str(config.api.listen))
    build = _compiled.state()
    log.info("serve.compiled", modules=build.compiled, stale=build.stale)
    try:
        await stop.wait()
        await services.drain(float(config.sip.drain_timeout_s))
    finally:
        server.close()
        freezer.close()
        await services.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        remove_pid_file(pid_file)
    print(f"sipmask stopped: counters {json.dumps(server.counters.as_dict())}", flush=True)
    return EXIT_OK


def reload_on_signal(services: Services, server: SipServer, load: Callable[[], Config]) -> None:
    """SIGHUP: a bad file is refused with the loader's one line; the running config stays."""
    try:
        loaded = load()
    except ConfigError as exc:
        log.error("config.reload_refused", error=str(exc))
        return
    result = services.reload(loaded, server)
    if result.kept:
        log.warning("config.reload_kept", keys=list(result.kept),
                    reason="these keys take effect at the next restart")
    log.info("config.reloaded", applied=list(result.applied))


def write_pid_file(path: Path | None) -> Path | None:
    """`sip.pid_file`, for `sipmask reload`. A file that cannot be written is logged, never
    fatal: the node runs, and SIGHUP still reloads it."""
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("sipmask.pid_file_failed", path=str(path), error=exc.strerror or str(exc))
        return None
    return path


def remove_pid_file(path: Path | None) -> None:
    """Only our own: another node may have taken the file over since."""
    if path is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


GC_FREEZE_INTERVAL = 1.0
# Young-generation threshold: Python's 700 runs a collection every few hundred allocations,
# and almost everything a call allocates lives past it (a call's objects last 100 ms or
# more, its transactions 32 s), so each collection walks objects that are about to be
# freed by reference counting anyway: 80-120 µs of CPU per call (bench/call_cpu.py, about
# 5 %). At 50,000 a collection runs every few seconds at 400 calls/s; garbage cycles, if
# any, still go within 50,000 allocations.
GC_THRESHOLDS = (50_000, 20, 10)


class GcFreezer:
    """Keeps the cyclic garbage collector's pauses short under load.

    Every live transaction (Timer J keeps each one for 64*T1 = 32 s on UDP) holds a dozen
    container objects, so at a few thousand requests a second the collector tracks close to
    a million of them and a full collection stalls the loop for a second or more: UDP peers
    retransmit and load collapses (bench/options_load.py at 2,000/s). Every second the
    survivors are moved out of the collector's sight (gc.freeze); reference counting still
    frees them when their transaction ends (nothing on the request path forms cycles; see
    tests/integration/test_serve.py), and young cycles are still collected, less often
    (GC_THRESHOLDS)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 interval: float = GC_FREEZE_INTERVAL) -> None:
        self.loop = loop
        self.interval = interval
        self._thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        gc.collect()
        gc.freeze()
        self._handle = loop.call_later(interval, self._tick)

    def _tick(self) -> None:
        gc.freeze()
        self._handle = self.loop.call_later(self.interval, self._tick)

    def close(self) -> None:
        self._handle.cancel()
        gc.set_threshold(*self._thresholds)


def raise_open_files_limit() -> tuple[int, int]:
    """Every relayed call holds 4 sockets (RTP and RTCP on both sides) and the relay keeps
    up to 4,096 idle pairs for reuse, far past the 1,024 open files a Debian login or
    service gets by default: lift the soft limit to the hard one. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def run(args: argparse.Namespace, config: Config) -> int:
    sm_logging.setup(config.log, secrets=sm_logging.config_secrets(config))
    raise_open_files_limit()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner, \
            contextlib.suppress(KeyboardInterrupt):
        return runner.run(serve(config, lambda: loader.load(args.config, args.overrides)))
    return EXIT_OK
