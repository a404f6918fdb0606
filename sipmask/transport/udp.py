"""The UDP shell: one asyncio datagram endpoint per `udp://` listen address.

It only moves bytes: each datagram is decoded (sipmask.transport.inbound) and handed to the
sink; unparsable ones are answered statelessly or dropped there. An exception while handling
one datagram is caught, counted and logged, and the endpoint goes on (a peer must never be
able to stop the listener).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol, cast

from sipmask.config.schema import Endpoint
from sipmask.observability import logging as sm_logging
from sipmask.sip.message import Request, Response
from sipmask.sip.transports import Address
from sipmask.sip.transports import Transport as TransportName
from sipmask.transport.counters import SipCounters
from sipmask.transport.inbound import Rejection, decode

# Large kernel buffers absorb bursts (a trunk retransmitting after a pause, a load test)
# while the loop is busy; the kernel caps them at net.core.rmem_max / wmem_max.
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024

# Lazy proxy: bound at first use, so `sipmask.observability.logging.setup` applies.
log = sm_logging.get_logger("sipmask.transport.udp")


class MessageSink(Protocol):
    """Where the shells deliver parsed messages: the server core."""

    def message_received(self, message: Request | Response, source: Address,
                         transport: TransportName) -> None: ...

    def transport_failed(self, dest: Address, transport: TransportName) -> None:
        """Bytes for `dest` could not be delivered (a TCP connect failed, say)."""


class UdpTransport(asyncio.DatagramProtocol):
    def __init__(self, sink: MessageSink, counters: SipCounters, max_bytes: int) -> None:
        self.sink = sink
        self.counters = counters
        self.max_bytes = max_bytes
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("", 0)
        self.family = socket.AF_INET

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport does not subclass asyncio.DatagramTransport; cast, not assert.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source: Address = (str(addr[0]), int(addr[1]))
        try:
            message = decode(data, source, "udp", self.counters, self.max_bytes)
            if isinstance(message, Rejection):
                if message.answer is not None and message.target is not None:
                    self.send(message.answer, message.target)
                log.debug("sip.rejected", source=source, reason=message.error.reason,
                          answered=message.answer is not None)
                return
            self.sink.message_received(message, source, "udp")
        except Exception:
            self.counters.internal_errors += 1
            log.exception("sip.datagram_failed", source=source, size=len(data))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable for an earlier send (Linux reports it on the next call):
        # the peer is gone; the transaction layer's timers deal with that.
        self.counters.send_errors += 1
        log.debug("sip.udp_error", error=str(exc))

    def send(self, data: bytes, dest: Address) -> bool:
        """Send one datagram; False (counted) when `dest` is unusable or we are closed."""
        transport = self.transport
        if transport is None or transport.is_closing():
            self.counters.send_errors += 1
            return False
        host, port = dest
        try:
            # Only IP literals of our family: a peer-chosen name (Via maddr, sent-by) must
            # not make us block on DNS, and plain asyncio closes the whole endpoint on a bad
            # port (a fatal OverflowError), which a peer could otherwise trigger at will.
            socket.inet_pton(self.family, host)
            if not 0 < port < 65536:
                raise ValueError(port)
            transport.sendto(data, dest)
        except (OSError, ValueError):
            self.counters.send_errors += 1
            log.debug("sip.udp_bad_destination", dest=dest)
            return False
        self.counters.sent += 1
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _socket_for(endpoint: Endpoint) -> socket.socket:
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        sock.bind((endpoint.host, endpoint.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_udp(endpoint: Endpoint, sink: MessageSink, counters: SipCounters,
                   max_bytes: int) -> UdpTransport:
    """Bind `endpoint` and start receiving. Raises OSError (address in use, not local…)."""
    loop = asyncio.get_running_loop()
    sock = _socket_for(endpoint)
    local = sock.getsockname()
    _, protocol = await loop.create_datagram_endpoint(
        lambda: UdpTransport(sink, counters, max_bytes), sock=sock)
    protocol.local = (str(local[0]), int(local[1]))
    protocol.family = sock.family
    return protocol
