"""SIP over TCP against slowloris: a per-IP cap, a deadline for each message, the trunk ACL at
accept time, and RFC 5626 keep-alives. Real `sipmask serve` processes, real sockets; the
counters it prints at SIGTERM say which rule closed what.

Connections come from distinct loopback addresses (127.0.0.2 is the attacker, 127.0.0.3 a
legitimate peer, 127.0.0.4 a host in no trunk's `inbound_allow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from sipmask.config.schema import Endpoint
from sipmask.sip.message import Response
from sipmask.sip.parser import StreamFramer, parse_message
from sipmask.transport.counters import SipCounters
from sipmask.transport.tcp import InboundLimits, open_tcp
from tests.support.net import LOOPBACK, free_port, options_request
from tests.support.serve import ServeProcess

ATTACKER, PEER, OUTSIDER = "127.0.0.2", "127.0.0.3", "127.0.0.4"
# A request line and half a Via: the head never ends (no CRLFCRLF).
PARTIAL = (b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/TCP 127.0.0.2:5999;branch=z9hG4bKslow")


def connect(server: ServeProcess, source: str, port: int | None = None) -> socket.socket:
    return socket.create_connection((LOOPBACK, port or server.port), timeout=2.0,
                                    source_address=(source, 0))


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes `sock` within `timeout` (FIN or RST), reading past data."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if sock.recv(65535) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True


def first_closed(socks: list[socket.socket], timeout: float) -> socket.socket | None:
    """The first of `socks` the server closes within `timeout`, or None."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(socks, [], [], left)
        for sock in readable:
            if closed_within(sock, 0.01):
                return sock
    return None


def options_answered(server: ServeProcess, source: str) -> int:
    """The status a fresh connection from `source` gets for OPTIONS."""
    with connect(server, source) as sock:
        sock.sendall(options_request(server.tcp, local=sock.getsockname(), transport="TCP"))
        framer = StreamFramer()
        while True:
            chunk = sock.recv(65535)
            assert chunk, "closed without an answer"
            for raw in framer.feed(chunk):
                message = parse_message(raw)
                assert isinstance(message, Response)
                return message.status


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_one_ip_holds_at_most_tcp_max_per_ip_and_others_are_still_served(
        serve: Callable[..., ServeProcess], sockets: list[socket.socket]) -> None:
    """The cap counts an IP's connections across every listener (two TCP ones here)."""
    cap = 4
    port, second = free_port(), free_port()
    server = serve("--set", f"sip.tcp_max_per_ip={cap}", "--set",
                   f"sip.listen=[tcp://{LOOPBACK}:{port},tcp://{LOOPBACK}:{second},"
                   f"udp://{LOOPBACK}:{port}]", port=port)    # UDP last: answers once all listen
    for i in range(cap + 1):
        sock = connect(server, ATTACKER, (port, second)[i % 2])
        sock.sendall(PARTIAL)
        sockets.append(sock)
    # Which one is over the cap is the server's accept order across its two listeners,
    # not our connect order: exactly one is closed, the others stay open.
    closed = first_closed(sockets, 5.0)
    assert closed is not None, "the connection over the per-IP cap stayed open"
    assert not any(closed_within(sock, 0.05) for sock in sockets if sock is not closed)
    assert options_answered(server, PEER) == 200
    counters = server.counters()
    assert counters["tcp_refused_per_ip"] == 1
    assert counters["tcp_accepted"] == cap + 1        # the PEER's connection too


def test_a_message_must_be_complete_within_tcp_message_timeout(
        serve: Callable[..., ServeProcess], sockets: list[socket.socket]) -> None:
    server = serve("--set", "sip.tcp_message_timeout_s=1")
    # A peer that sent one good message, then half of the next.
    talker = connect(server, ATTACKER)
    talker.sendall(options_request(server.tcp, local=talker.getsockname(), transport="TCP"))
    assert talker.recv(65535).startswith(b"SIP/2.0 200 ")
    silent = connect(server, ATTACKER)        # says nothing at all
    dripper = connect(server, ATTACKER)       # a byte at a time, never a whole head
    sockets += [talker, silent, dripper]
    started = time.monotonic()
    talker.sendall(PARTIAL)
    closed_at: dict[str, float] = {}
    for i in range(12):                       # 3 s at most
        if "dripper" not in closed_at:
            try:
                dripper.sendall(PARTIAL[i:i + 1])
            except OSError:
                closed_at["dripper"] = time.monotonic() - started
        for name, sock in (("talker", talker), ("silent", silent), ("dripper", dripper)):
            if name not in closed_at and closed_within(sock, 0.25 / 3):
                closed_at[name] = time.monotonic() - started
        if len(closed_at) == 3:
            break
    assert set(closed_at) == {"talker", "silent", "dripper"}, closed_at
    for name, after in closed_at.items():
        assert 0.9 <= after <= 2.0, (name, after)
    counters = server.counters()
    assert counters["tcp_message_timeouts"] == 3
    assert counters["tcp_idle_closed"] == 0


def test_a_source_in_no_trunk_acl_is_closed_at_accept(
        serve: Callable[..., ServeProcess], sockets: list[socket.socket]) -> None:
    server = serve("--set", f"trunks.carrier.inbound_allow=[{LOOPBACK}/32,{PEER}/32]")
    outsider = connect(server, OUTSIDER)
    sockets.append(outsider)
    with contextlib.suppress(OSError):         # already closed: just as good
        outsider.sendall(options_request(server.tcp, local=outsider.getsockname(),
                                         transport="TCP"))
    started = time.monotonic()
    assert closed_within(outsider, 2.0)
    assert time.monotonic() - started < 0.5
    assert options_answered(server, PEER) == 200
    counters = server.counters()
    assert counters["tcp_refused_acl"] == 1
    assert counters["requests_by_method"].get("OPTIONS", 0) >= 2   # probe + PEER, not OUTSIDER
    assert counters["tcp_accepted"] == 1


def test_keepalives_get_a_pong_and_keep_a_quiet_connection_past_the_idle_timeout(
        serve: Callable[..., ServeProcess], sockets: list[socket.socket]) -> None:
    """RFC 5626 §4.4.1: CRLFCRLF is a ping, answered with one CRLF; keep-alives are traffic,
    so a caller that keeps its flow alive keeps it open through a long, quiet call."""
    server = serve("--set", "sip.tcp_idle_timeout_s=1", "--set", "sip.tcp_message_timeout_s=1")
    sock = connect(server, PEER)
    sockets.append(sock)
    sock.sendall(options_request(server.tcp, local=sock.getsockname(), transport="TCP"))
    assert sock.recv(65535).startswith(b"SIP/2.0 200 ")
    for _ in range(6):                          # 2.4 s: past the idle timeout and deadline
        time.sleep(0.4)
        sock.sendall(b"\r\n\r\n")
        sock.settimeout(1.0)
        assert sock.recv(16) == b"\r\n"
    assert closed_within(sock, 2.5)             # silence: the idle timeout closes it
    counters = server.counters()
    assert counters["tcp_idle_closed"] == 1 and counters["tcp_message_timeouts"] == 0


# -- in-process: what sipmask opens itself is exempt --------------------------------------
class Sink:
    def message_received(self, message: object, source: tuple[str, int],
                         transport: str) -> None:
        pass

    def transport_failed(self, dest: tuple[str, int], transport: str) -> None:
        pass


def test_connections_sipmask_opens_are_not_subject_to_the_acl_or_per_ip_cap() -> None:
    async def scenario() -> tuple[list[bytes], SipCounters]:
        counters = SipCounters()
        received: list[bytes] = []
        writers: list[asyncio.StreamWriter] = []

        async def on_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            received.append(await reader.readuntil(b"\r\n\r\n"))

        with ExitStack() as stack:
            peers = [await asyncio.start_server(on_peer, "127.0.0.5", 0) for _ in range(2)]
            for peer in peers:
                stack.callback(peer.close)
            shell = await open_tcp(Endpoint("tcp", LOOPBACK, free_port()), Sink(), counters,
                                   65535, limits=InboundLimits(max_per_ip=1,
                                                               allow=lambda host: False))
            stack.callback(shell.close)
            for peer in peers:
                dest = peer.sockets[0].getsockname()[:2]
                shell.send(options_request(dest, transport="TCP"), dest)
            for _ in range(100):
                if len(received) == 2:
                    break
                await asyncio.sleep(0.02)
            for writer in writers:
                writer.close()
        await asyncio.sleep(0.05)
        return received, counters

    received, counters = asyncio.run(scenario())
    assert len(received) == 2
    assert counters.tcp_refused_acl == 0 and counters.tcp_refused_per_ip == 0
