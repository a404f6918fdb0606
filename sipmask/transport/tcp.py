"""The TCP shell (and, with TLS contexts, the TLS one): a listening server plus a table of
connections keyed by peer address.

RFC 3261 §18.2.2: a response goes back on the connection its request came on, so the table
is keyed by the peer's (ip, port) and `send(data, dest)` writes on that connection; a request
to a destination with no connection opens one (§18.1.1) and reuses it afterwards. The same
holds for requests to a party whose connection is open (RFC 5923's practice): sipmask never
opens a second connection to an address it has one with.
Each connection cuts its stream with a StreamFramer (§18.3, Content-Length). When framing
itself breaks the stream cannot be resynchronised: 400 if the head is readable, then close.
A message that frames but does not parse gets its 400 and the connection stays open, since
Content-Length kept the stream in step.

TLS (§26.2.1) is one more layer in the same connection (transport/tls.py, sans-IO), so TLS
connections obey every rule below; the handshake is part of what a peer owes first.

Rules that keep a peer from holding connections it does not use (slowloris):
- Inbound connections whose source is in no trunk's `inbound_allow` are closed at accept
  (`allow`); so are those over `max_per_ip` from one IP or over `max_connections` in all,
  counted across every TCP and TLS listener (InboundLimits, one per process).
  Connections sipmask opens itself are subject to none of these.
- `message_timeout`: an inbound connection must deliver its first complete message (after
  its TLS handshake) within it of being accepted, an outbound TLS connection must finish its
  handshake within it, and every later message must be complete within it of its first
  byte. RFC 5626 keep-alive CRLFs between messages are no message: they owe nothing.
- `idle_timeout`: a connection with no traffic at all (keep-alives and pongs count) is
  closed. A connection that carries a long, quiet call stays open while its peer keeps it
  alive (RFC 5626 §4.4.1 pings, answered here with a pong); otherwise in-dialog requests to
  that peer go to its Contact (the engine's fallback once `connected()` says no).
Both deadlines are checked by one sweep every quarter of the shorter one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from sipmask.config.schema import Endpoint
from sipmask.errors import ParseError
from sipmask.observability import logging as sm_logging
from sipmask.sip.parser import StreamFramer
from sipmask.sip.transports import Address
from sipmask.sip.transports import Transport as TransportName
from sipmask.transport.counters import SipCounters
from sipmask.transport.inbound import Rejection, decode, reject
from sipmask.transport.tls import TlsContexts, TlsSession
from sipmask.transport.udp import MessageSink

DEFAULT_IDLE_TIMEOUT = 300.0     # seconds without traffic before we close a connection
DEFAULT_MAX_CONNECTIONS = 4096
DEFAULT_MAX_PER_IP = 64
DEFAULT_MESSAGE_TIMEOUT = 10.0
# A peer that stops reading must not make us buffer without bound.
MAX_WRITE_BUFFER = 4 * 1024 * 1024
PONG = b"\r\n"                   # RFC 5626 §4.4.1: the answer to a CRLFCRLF ping

# Lazy proxy: bound at first use, so `sipmask.observability.logging.setup` applies.
log = sm_logging.get_logger("sipmask.transport.tcp")


@dataclass
class InboundLimits:
    """Who may hold connections peers open to sipmask. One is shared by every TCP and TLS
    listener of a process, so an IP's share is counted across them all."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_per_ip: int = DEFAULT_MAX_PER_IP           # 0: no per-IP cap
    allow: Callable[[str], bool] | None = None     # the trunk ACL; None: every source
    open: int = 0                                  # inbound connections open now
    per_ip: dict[str, int] = field(default_factory=dict)

    def admit(self, host: str, counters: SipCounters) -> str | None:
        """Count a new inbound connection from `host` as open (None), or say why it is
        refused (counted, not opened)."""
        if self.allow is not None and not self.allow(host):
            counters.tcp_refused_acl += 1
            return "acl"
        held = self.per_ip.get(host, 0)
        if self.max_per_ip and held >= self.max_per_ip:
            counters.tcp_refused_per_ip += 1
            return "per_ip"
        if self.open >= self.max_connections:
            counters.tcp_refused += 1
            return "max_connections"
        self.per_ip[host] = held + 1
        self.open += 1
        counters.tcp_accepted += 1
        return None

    def release(self, host: str) -> None:
        self.open -= 1
        left = self.per_ip.get(host, 1) - 1
        if left > 0:
            self.per_ip[host] = left
        else:
            self.per_ip.pop(host, None)


class TcpConnection(asyncio.Protocol):
    def __init__(self, owner: TcpTransport, dest: Address | None = None) -> None:
        self.owner = owner
        self.inbound = dest is None      # accepted on our listener; else sipmask opened it
        self.peer: Address = dest or ("", 0)
        self.server_hostname = dest[0] if dest is not None else None
        self.framer = StreamFramer(owner.max_bytes)
        self.transport: asyncio.Transport | None = None
        self.tls: TlsSession | None = None
        now = owner.loop.time()
        self.last_active = now
        # When the wait for what the peer owes began (checked against message_timeout): an
        # inbound connection owes its first message from accept, an outbound TLS one its
        # handshake, and any connection a message whose first byte arrived. None: nothing
        # owed (between messages).
        self.owed_since: float | None = now if self.inbound else None
        self.opening = self.inbound      # still owes its opening (first message / handshake)
        self._unframed = b""   # the bytes the framer holds, to salvage a 400 from
        self.registered = False
        self.admitted = False            # counted open in the owner's InboundLimits

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peername = self.transport.get_extra_info("peername")
        if self.inbound and peername is not None:
            self.peer = (str(peername[0]), int(peername[1]))
        # An outbound connection keeps the address the core sent to as its key, so the
        # next send to it, and a failure report, name the same address.
        owner = self.owner
        if not owner.register(self):
            return
        if owner.tls is not None:
            # Only now: a refused connection costs no TLS state.
            if self.inbound:
                self.tls = TlsSession(owner.tls.server, server_side=True)
            else:
                self.tls = TlsSession(owner.tls.client, server_side=False,
                                      server_hostname=self.server_hostname)
                self.owed_since, self.opening = owner.loop.time(), True
                self.tls.start()
                self._write_raw(self.tls.output())

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        owner.unregister(self)
        if self.registered and not self.inbound and self.tls is not None \
                and not self.tls.established:
            # What was queued for the peer never left (§17.1.4): its transactions fail now
            # rather than at Timer B/F.
            owner.report_failure(self.peer)

    def data_received(self, data: bytes) -> None:
        if not self.registered:
            return          # refused at accept; bytes may race the close
        self.last_active = self.owner.loop.time()
        tls = self.tls
        if tls is not None:
            data = self._decrypt(tls, data)
        if data:
            self._feed(data)
        if tls is not None and tls.peer_closed:
            self.close()

    def _decrypt(self, tls: TlsSession, data: bytes) -> bytes:
        was_established = tls.established
        try:
            plain = tls.receive(data)
        except ssl.SSLError as exc:
            self.owner.counters.tls_failed += 1
            # Info, not debug: an expired or wrong certificate on a trunk shows up here.
            log.info("sip.tls_failed", peer=self.peer, inbound=self.inbound,
                     reason=exc.reason or type(exc).__name__,
                     detail=getattr(exc, "verify_message", None))
            self._write_raw(tls.output())      # the alert, so the peer learns why
            self.close()
            return b""
        self._write_raw(tls.output())
        if tls.established and not was_established and not self.inbound:
            self.opening = False
            self._track(completed=False)
        return plain

    def _feed(self, data: bytes) -> None:
        counters = self.owner.counters
        combined = self._unframed + data if self._unframed else data
        try:
            messages = self.framer.feed(data)
        except ParseError as exc:
            # The framer keeps the broken message at the front of its buffer.
            broken = combined[len(combined) - self.framer.buffered:]
            rejection = reject(broken, exc, self.peer, counters)
            if rejection.answer is not None:
                self.write(rejection.answer)
            log.debug("sip.tcp_framing_error", peer=self.peer, reason=exc.reason)
            self.close()
            return
        except Exception:
            counters.internal_errors += 1
            log.exception("sip.tcp_failed", peer=self.peer)
            self.close()
            return
        self._unframed = combined[len(combined) - self.framer.buffered:] \
            if self.framer.buffered else b""
        pings = self.framer.take_pings()
        if pings:
            self._pong(pings)
        self._track(completed=bool(messages))
        for raw in messages:
            self._deliver(raw)

    def _track(self, completed: bool) -> None:
        """Move the message deadline after new bytes: a message that completed ends the
        opening; bytes left in the framer start a message (at its first byte)."""
        if completed:
            self.opening = False
        if self.framer.buffered:
            if completed or self.owed_since is None:
                self.owed_since = self.owner.loop.time()
        elif not self.opening:
            self.owed_since = None

    def _deliver(self, raw: bytes) -> None:
        owner = self.owner
        try:
            message = decode(raw, self.peer, owner.name, owner.counters, owner.max_bytes)
            if isinstance(message, Rejection):
                if message.answer is not None:
                    self.write(message.answer)
                return
            owner.sink.message_received(message, self.peer, owner.name)
        except Exception:
            owner.counters.internal_errors += 1
            log.exception("sip.tcp_message_failed", peer=self.peer)

    def write(self, data: bytes) -> bool:
        """Send one SIP message (through TLS when the connection has it)."""
        transport = self.transport
        counters = self.owner.counters
        if transport is None or transport.is_closing():
            counters.send_errors += 1
            return False
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            counters.send_errors += 1
            log.warning("sip.tcp_peer_not_reading", peer=self.peer)
            transport.abort()
            return False
        if self.tls is not None:
            self.tls.send(data)          # held until the handshake is over
            data = self.tls.output()
        if data:
            transport.write(data)
        counters.sent += 1
        self.last_active = self.owner.loop.time()
        return True

    def _pong(self, pings: int) -> None:
        data = PONG * pings
        if self.tls is not None:
            self.tls.send(data)
            data = self.tls.output()
        self._write_raw(data)

    def _write_raw(self, data: bytes) -> None:
        """Bytes on the wire that are no SIP message: TLS records of the handshake, alerts,
        pongs (not counted as sent messages)."""
        if not data:
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.last_active = self.owner.loop.time()

    def close(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.tls is not None:
            self.tls.close()
            self._write_raw(self.tls.output())
        transport.close()

    def abort(self) -> None:
        """Close now, dropping unsent bytes: for peers that hold a connection unused (a
        close would wait for a peer that does not read to take our buffer)."""
        if self.transport is not None:
            self.transport.abort()


class TcpTransport:
    def __init__(self, sink: MessageSink, counters: SipCounters, max_bytes: int, *,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 message_timeout: float = DEFAULT_MESSAGE_TIMEOUT,
                 limits: InboundLimits | None = None,
                 tls: TlsContexts | None = None) -> None:
        """`message_timeout` 0 switches that rule off; `limits` None: this listener's own,
        with the defaults; with `tls` this is the TLS shell."""
        self.sink = sink
        self.counters = counters
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.message_timeout = message_timeout
        self.limits = limits if limits is not None else InboundLimits()
        self.tls = tls
        self.name: TransportName = "tls" if tls is not None else "tcp"
        self.loop = asyncio.get_running_loop()
        self.connections: dict[Address, TcpConnection] = {}
        self.local: Address = ("", 0)
        self._server: asyncio.Server | None = None
        self._connecting: dict[Address, list[bytes]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def listen(self, endpoint: Endpoint) -> None:
        """Start accepting on `endpoint`. Raises OSError (address in use, not local…)."""
        factory: Callable[[], TcpConnection] = lambda: TcpConnection(self)  # noqa: E731
        self._server = await self.loop.create_server(
            factory, endpoint.host, endpoint.port, reuse_address=True)
        self.local = self._server.sockets[0].getsockname()[:2]
        self._arm_sweeper()

    def register(self, conn: TcpConnection) -> bool:
        """Admit a connection that just opened, or close it and count why (False)."""
        refused: str | None = None
        if self._closed:
            refused = "closing"
        elif conn.inbound:
            refused = self.limits.admit(conn.peer[0], self.counters)
            conn.admitted = refused is None
        if refused is not None:
            # Debug only: under a flood this would be a line per connection.
            log.debug("sip.tcp_refused", peer=conn.peer, reason=refused)
            conn.close()
            return False
        old = self.connections.get(conn.peer)
        if old is not None and old is not conn:
            old.close()
        self.connections[conn.peer] = conn
        conn.registered = True
        return True

    def unregister(self, conn: TcpConnection) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]
        if conn.admitted:
            conn.admitted = False
            self.limits.release(conn.peer[0])

    def send(self, data: bytes, dest: Address) -> None:
        """Write on the connection to `dest`, opening one when there is none (§18.1.1)."""
        conn = self.connections.get(dest)
        if conn is not None and conn.write(data):
            return
        pending = self._connecting.get(dest)
        if pending is not None:
            pending.append(data)
            return
        if self._closed:
            self.counters.send_errors += 1
            return
        self._connecting[dest] = [data]
        self.loop.create_task(self._connect(dest))

    async def _connect(self, dest: Address) -> None:
        try:
            _, conn = await self.loop.create_connection(
                lambda: TcpConnection(self, dest), dest[0], dest[1])
        except OSError as exc:
            dropped = self._connecting.pop(dest, [])
            self.counters.send_errors += len(dropped)
            log.info("sip.tcp_connect_failed", dest=dest, transport=self.name, error=str(exc))
            self.report_failure(dest)
            return
        for data in self._connecting.pop(dest, []):
            conn.write(data)

    def report_failure(self, dest: Address) -> None:
        """Tell the core that bytes for `dest` will not arrive (§17.1.4)."""
        try:
            self.sink.transport_failed(dest, self.name)
        except Exception:
            self.counters.internal_errors += 1
            log.exception("sip.transport_failed_hook", dest=dest)

    def _arm_sweeper(self) -> None:
        shortest = min(self.idle_timeout, self.message_timeout or self.idle_timeout)
        self._sweeper = self.loop.call_later(max(shortest / 4, 0.05), self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        idle_before = now - self.idle_timeout
        late_before = now - self.message_timeout if self.message_timeout else None
        counters = self.counters
        for conn in list(self.connections.values()):
            transport = conn.transport
            if transport is None or transport.is_closing():
                continue
            owed = conn.owed_since
            if late_before is not None and owed is not None and owed < late_before:
                counters.tcp_message_timeouts += 1
                log.debug("sip.tcp_message_timeout", peer=conn.peer, opening=conn.opening)
                conn.abort()
            elif conn.last_active < idle_before:
                counters.tcp_idle_closed += 1
                conn.close()
        if not self._closed:
            self._arm_sweeper()

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections.values()):
            conn.close()


async def open_tcp(endpoint: Endpoint, sink: MessageSink, counters: SipCounters,
                   max_bytes: int, *, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                   message_timeout: float = DEFAULT_MESSAGE_TIMEOUT,
                   limits: InboundLimits | None = None,
                   tls: TlsContexts | None = None) -> TcpTransport:
    """Listen on `endpoint` (TCP, or TLS with `tls`). Raises OSError (address in use…)."""
    transport = TcpTransport(sink, counters, max_bytes, idle_timeout=idle_timeout,
                             message_timeout=message_timeout, limits=limits, tls=tls)
    await transport.listen(endpoint)
    return transport
