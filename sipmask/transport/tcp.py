"""The TCP shell: a listening server plus a table of connections keyed by peer address.

RFC 3261 §18.2.2: a response goes back on the connection its request came on, so the table
is keyed by the peer's (ip, port) and `send(data, dest)` writes on that connection; a request
to a TCP destination with no connection opens one (§18.1.1) and reuses it afterwards.
Each connection cuts its stream with a StreamFramer (§18.3, Content-Length). When framing
itself breaks the stream cannot be resynchronised: 400 if the head is readable, then close.
A message that frames but does not parse gets its 400 and the connection stays open, since
Content-Length kept the stream in step. Idle connections are closed after `idle_timeout`;
at most `max_connections` are kept (extra inbound ones are closed at once, counted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from sipmask.config.schema import Endpoint
from sipmask.errors import ParseError
from sipmask.observability import logging as sm_logging
from sipmask.sip.parser import StreamFramer
from sipmask.sip.transports import Address
from sipmask.transport.counters import SipCounters
from sipmask.transport.inbound import Rejection, decode, reject
from sipmask.transport.udp import MessageSink

DEFAULT_IDLE_TIMEOUT = 300.0     # seconds without traffic before we close a connection
DEFAULT_MAX_CONNECTIONS = 4096
# A peer that stops reading must not make us buffer without bound.
MAX_WRITE_BUFFER = 4 * 1024 * 1024

# Lazy proxy: bound at first use, so `sipmask.observability.logging.setup` applies.
log = sm_logging.get_logger("sipmask.transport.tcp")


class TcpConnection(asyncio.Protocol):
    def __init__(self, owner: TcpTransport, peer: Address | None = None) -> None:
        self.owner = owner
        self.peer: Address = peer or ("", 0)
        self.framer = StreamFramer(owner.max_bytes)
        self.transport: asyncio.Transport | None = None
        self.last_active = owner.loop.time()
        self._unframed = b""   # the bytes the framer holds, to salvage a 400 from
        self.registered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peername = self.transport.get_extra_info("peername")
        if peername is not None:
            self.peer = (str(peername[0]), int(peername[1]))
        self.owner.register(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.unregister(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = self.owner.loop.time()
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
        for raw in messages:
            self._deliver(raw)

    def _deliver(self, raw: bytes) -> None:
        try:
            message = decode(raw, self.peer, "tcp", self.owner.counters, self.owner.max_bytes)
            if isinstance(message, Rejection):
                if message.answer is not None:
                    self.write(message.answer)
                return
            self.owner.sink.message_received(message, self.peer, "tcp")
        except Exception:
            self.owner.counters.internal_errors += 1
            log.exception("sip.tcp_message_failed", peer=self.peer)

    def write(self, data: bytes) -> bool:
        transport = self.transport
        if transport is None or transport.is_closing():
            self.owner.counters.send_errors += 1
            return False
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.owner.counters.send_errors += 1
            log.warning("sip.tcp_peer_not_reading", peer=self.peer)
            transport.abort()
            return False
        transport.write(data)
        self.owner.counters.sent += 1
        self.last_active = self.owner.loop.time()
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TcpTransport:
    def __init__(self, sink: MessageSink, counters: SipCounters, max_bytes: int, *,
                 idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        self.sink = sink
        self.counters = counters
        self.max_bytes = max_bytes
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
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

    def register(self, conn: TcpConnection) -> None:
        if self._closed or len(self.connections) >= self.max_connections:
            self.counters.tcp_refused += 1
            conn.close()
            return
        old = self.connections.get(conn.peer)
        if old is not None and old is not conn:
            old.close()
        self.connections[conn.peer] = conn
        conn.registered = True
        self.counters.tcp_accepted += 1

    def unregister(self, conn: TcpConnection) -> None:
        if self.connections.get(conn.peer) is conn:
            del self.connections[conn.peer]

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
            log.info("sip.tcp_connect_failed", dest=dest, error=str(exc))
            try:
                self.sink.transport_failed(dest, "tcp")
            except Exception:
                self.counters.internal_errors += 1
                log.exception("sip.transport_failed_hook", dest=dest)
            return
        for data in self._connecting.pop(dest, []):
            conn.write(data)

    def _arm_sweeper(self) -> None:
        interval = max(self.idle_timeout / 4, 0.05)
        self._sweeper = self.loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        deadline = self.loop.time() - self.idle_timeout
        for conn in list(self.connections.values()):
            if conn.last_active < deadline:
                self.counters.tcp_idle_closed += 1
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
                   max_connections: int = DEFAULT_MAX_CONNECTIONS) -> TcpTransport:
    """Listen on `endpoint`. Raises OSError (address in use, not local…)."""
    transport = TcpTransport(sink, counters, max_bytes, idle_timeout=idle_timeout,
                             max_connections=max_connections)
    await transport.listen(endpoint)
    return transport
