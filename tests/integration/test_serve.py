"""`sipmask serve` over real loopback sockets: OPTIONS, malformed input, TCP framing, rport.

Each behaviour is pinned against a real server subprocess; the counters it prints at
SIGTERM are the observable record of what it dropped and answered.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipmask.config import loader
from sipmask.config.schema import Endpoint
from sipmask.server import DefaultHandler, SipServer
from sipmask.sip.message import Request, Response
from sipmask.sip.parser import StreamFramer, parse_message
from sipmask.sip.transaction import TransportFailed
from sipmask.transport.counters import SipCounters
from sipmask.transport.tcp import InboundLimits, open_tcp
from tests.support.net import LOOPBACK, free_port, options_request, udp_exchange
from tests.support.paths import CORPUS, REPO
from tests.support.serve import ServeProcess, start_serve

MAX_BYTES = 4096


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    proc = start_serve(tmp_path_factory.mktemp("serve"),
                       "--set", f"sip.max_message_bytes={MAX_BYTES}")
    yield proc
    assert proc.stop() == 0, proc.stderr()


def response_of(data: bytes | None) -> Response:
    assert data is not None, "no answer"
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((LOOPBACK, 0))
    return s


def broken(field: str, value: str, target: tuple[str, int]) -> bytes:
    """A valid OPTIONS with one header replaced."""
    lines = options_request(target).decode().split("\r\n")
    out = [f"{field}: {value}" if line.split(":", 1)[0] == field else line for line in lines]
    return "\r\n".join(out).encode()


def test_options_gets_200_copying_the_transaction_headers(server: ServeProcess) -> None:
    with udp_socket() as s:
        local = s.getsockname()
        request = options_request(server.udp, local=local, call_id="opt-1@probe",
                                  branch="z9hG4bKopt1")
        response = response_of(udp_exchange(request, server.udp, sock=s))
    assert (response.status, response.reason) == (200, "OK")
    # RFC 3261 §8.2.6.2: Via, From, Call-ID, CSeq copied; To copied with a tag added.
    assert response.top_via.branch == "z9hG4bKopt1"
    assert response.top_via.host == LOOPBACK and response.top_via.port == local[1]
    assert response.headers.get("from") == f"<sip:probe@{LOOPBACK}>;tag=probe1"
    assert response.to.uri.__str__() == f"sip:{server.udp[0]}:{server.udp[1]}"
    assert response.to.tag
    assert response.call_id == "opt-1@probe"
    assert str(response.cseq) == "1 OPTIONS"
    # §11.2: the answer says what we can do.
    assert "OPTIONS" in (response.headers.get("allow") or "")
    assert response.headers.get("accept") == "application/sdp"


@pytest.mark.parametrize("params", [";maddr=127.0.0.9", ";received=127.0.0.9",
                                    ";rport={port};received=127.0.0.9"])
def test_a_via_cannot_point_the_answer_at_a_third_party(server: ServeProcess,
                                                        params: str) -> None:
    """Reflection: maddr, or received/rport values the peer wrote itself, would aim our
    answers at someone else (here 127.0.0.9 on the same port); they go to the source."""
    with udp_socket() as s, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim:
        local = s.getsockname()
        victim.bind(("127.0.0.9", local[1]))
        via_params = params.format(port=local[1])
        request = options_request(server.udp, local=local, rport=False).replace(
            f"{LOOPBACK}:{local[1]};branch=".encode(),
            f"{LOOPBACK}:{local[1]}{via_params};branch=".encode())
        assert via_params.encode() in request
        response = response_of(udp_exchange(request, server.udp, sock=s))
        assert response.status == 200
        victim.settimeout(0.3)
        with pytest.raises(TimeoutError):
            victim.recv(65535)


def test_garbage_datagram_gets_no_answer(server: ServeProcess) -> None:
    assert udp_exchange(b"\x00\xff not sip at all \r\n\r\n", server.udp, timeout=0.5) is None
    assert udp_exchange(b"", server.udp, timeout=0.3) is None
    assert server.alive()


def test_readable_via_and_broken_header_gets_400_naming_it(server: ServeProcess) -> None:
    response = response_of(udp_exchange(broken("Max-Forwards", "seventy", server.udp),
                                        server.udp))
    assert response.status == 400
    assert "Max-Forwards" in response.reason
    assert response.to.tag  # §8.2.6.2, even on a stateless error


def test_stateless_400s_carry_a_fresh_random_to_tag_each(server: ServeProcess) -> None:
    """§8.2.6.2 wants a To tag; a fixed one would mark every answer as sipmask's and let a
    peer tie them together (§19.3: tags are random)."""
    tags = [response_of(udp_exchange(broken("Max-Forwards", "seventy", server.udp),
                                     server.udp)).to.tag for _ in range(2)]
    assert tags[0] and tags[1] and tags[0] != tags[1]
    assert all(len(tag) >= 8 and "sipmask" not in tag for tag in tags)  # type: ignore[operator]


def test_broken_from_gets_400_naming_from(server: ServeProcess) -> None:
    # The answer copies the broken From (§8.2.6.2), so read its status line only.
    answer = udp_exchange(broken("From", "<<<", server.udp), server.udp)
    assert answer is not None
    status_line = answer.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("SIP/2.0 400 ")
    assert "From" in status_line or "name-addr" in status_line


def test_broken_ack_is_never_answered(server: ServeProcess) -> None:
    ack = broken("Max-Forwards", "x", server.udp).replace(b"OPTIONS", b"ACK")
    assert udp_exchange(ack, server.udp, timeout=0.4) is None


def test_unreadable_via_is_dropped(server: ServeProcess) -> None:
    assert udp_exchange(broken("Via", "garbage", server.udp), server.udp, timeout=0.4) is None


def test_oversized_datagram_is_refused_with_513(server: ServeProcess) -> None:
    request = options_request(server.udp)
    huge = request.replace(b"Content-Length: 0\r\n\r\n",
                           b"X-Pad: " + b"a" * (MAX_BYTES + 100) + b"\r\nContent-Length: 0\r\n\r\n")
    response = response_of(udp_exchange(huge, server.udp))
    assert response.status == 513
    assert "Too Large" in response.reason


def test_default_handler_refuses_what_it_does_not_serve() -> None:
    """SipServer without the B2BUA (DefaultHandler), on a real socket: RFC 3261 §8.2.1
    405 for a known method, 501 for an unknown one, §12.2.2 481 for a BYE outside a
    dialog, §8.2.2.3 420 for an unsupported Require, and OPTIONS 200 with Supported."""
    config = loader.loads("", [f"sip.listen=[udp://{LOOPBACK}:{free_port()}]",
                               "api.listen=null"])

    async def scenario() -> dict[str, Response]:
        server = SipServer(config)
        await server.start()
        loop = asyncio.get_running_loop()
        target = server.udp[0].local
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((LOOPBACK, 0))
        client.setblocking(False)
        answers: dict[str, Response] = {}
        try:
            for name, method, extra in (("register", b"REGISTER", b""),
                                        ("frob", b"FROB", b""), ("bye", b"BYE", b""),
                                        ("options", b"OPTIONS", b""),
                                        ("require", b"OPTIONS", b"Require: foo\r\n")):
                request = options_request(target, local=client.getsockname())
                request = request.replace(b"OPTIONS", method).replace(
                    b"Content-Length", extra + b"Content-Length")
                await loop.sock_sendto(client, request, target)
                data = await asyncio.wait_for(loop.sock_recv(client, 65535), 2)
                answers[name] = response_of(data)
        finally:
            client.close()
            server.close()
            await asyncio.sleep(0.05)
        return answers

    answers = asyncio.run(scenario())
    assert answers["register"].status == 405
    assert "OPTIONS" in (answers["register"].headers.get("allow") or "")
    assert answers["frob"].status == 501
    assert answers["bye"].status == 481
    assert answers["require"].status == 420
    assert answers["require"].headers.get("unsupported") == "foo"
    assert answers["options"].status == 200 and "supported" in answers["options"].headers


def test_still_answers_after_abuse(server: ServeProcess) -> None:
    for junk in (b"\r\n" * 100, b"INVITE", b"SIP/2.0 200 OK\r\n\r\n", bytes(range(256)) * 10,
                 broken("CSeq", "1 INVITE", server.udp), broken("Call-ID", "", server.udp)):
        with udp_socket() as s:
            s.sendto(junk, server.udp)
    assert response_of(udp_exchange(options_request(server.udp), server.udp)).status == 200
    assert server.alive()


def test_rport_sends_the_response_to_the_source_port(server: ServeProcess) -> None:
    with udp_socket() as sender, udp_socket() as via_port:
        # The Via names another port; RFC 3581 §4: with rport, the source port wins.
        request = options_request(server.udp, local=via_port.getsockname(), rport=True)
        response = response_of(udp_exchange(request, server.udp, sock=sender))
        assert response.top_via.rport == str(sender.getsockname()[1])
        assert response.top_via.received == LOOPBACK
        # Without rport, RFC 3261 §18.2.2: the response goes to the Via's sent-by port.
        request = options_request(server.udp, local=via_port.getsockname(), rport=False)
        sender.sendto(request, server.udp)
        via_port.settimeout(1.0)
        assert response_of(via_port.recv(65535)).status == 200


# -- TCP -----------------------------------------------------------------------------------
def tcp_read(sock: socket.socket, count: int, timeout: float = 2.0) -> list[Response]:
    framer = StreamFramer()
    got: list[bytes] = []
    sock.settimeout(timeout)
    while len(got) < count:
        chunk = sock.recv(65535)
        if not chunk:
            break
        got += framer.feed(chunk)
    return [response_of(raw) for raw in got]


def tcp_options(server: ServeProcess, sock: socket.socket, call_id: str) -> bytes:
    return options_request(server.tcp, local=sock.getsockname(), transport="TCP",
                           call_id=call_id)


def test_tcp_two_messages_in_one_segment(server: ServeProcess) -> None:
    with socket.create_connection(server.tcp) as sock:
        sock.sendall(tcp_options(server, sock, "one") + tcp_options(server, sock, "two"))
        responses = tcp_read(sock, 2)
    assert [(r.status, r.call_id) for r in responses] == [(200, "one"), (200, "two")]


def test_tcp_one_message_split_over_segments(server: ServeProcess) -> None:
    data = b""
    with socket.create_connection(server.tcp) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = tcp_options(server, sock, "split")
        for i in range(0, len(data), 17):
            sock.sendall(data[i:i + 17])
            time.sleep(0.005)
        responses = tcp_read(sock, 1)
    assert [(r.status, r.call_id) for r in responses] == [(200, "split")]


def test_tcp_bad_message_gets_400_and_the_stream_goes_on(server: ServeProcess) -> None:
    with socket.create_connection(server.tcp) as sock:
        bad = tcp_options(server, sock, "bad").replace(b"Max-Forwards: 70",
                                                       b"Max-Forwards: many")
        sock.sendall(bad + tcp_options(server, sock, "good"))
        responses = tcp_read(sock, 2)
    assert [(r.status, r.call_id) for r in responses] == [(400, "bad"), (200, "good")]
    assert "Max-Forwards" in responses[0].reason


def test_tcp_unframeable_stream_gets_400_and_is_closed(server: ServeProcess) -> None:
    with socket.create_connection(server.tcp) as sock:
        # §18.3: Content-Length is mandatory on a stream; without it nothing can be cut.
        bad = tcp_options(server, sock, "nolen").replace(b"Content-Length: 0\r\n", b"")
        sock.sendall(bad)
        responses = tcp_read(sock, 1)
        assert [(r.status, r.call_id) for r in responses] == [(400, "nolen")]
        assert "Content-Length" in responses[0].reason
        sock.settimeout(2.0)
        assert sock.recv(100) == b""  # closed by the server


# -- counters, signals, start-up errors -----------------------------------------------------
def test_counters_record_what_was_answered_and_dropped(serve) -> None:  # type: ignore[no-untyped-def]
    proc: ServeProcess = serve("--set", f"sip.max_message_bytes={MAX_BYTES}")
    assert udp_exchange(b"garbage\r\n\r\n", proc.udp, timeout=0.3) is None
    response_of(udp_exchange(broken("Max-Forwards", "x", proc.udp), proc.udp))
    response_of(udp_exchange(options_request(proc.udp) + b"a" * MAX_BYTES, proc.udp))
    response_of(udp_exchange(options_request(proc.udp).replace(b"OPTIONS", b"INVITE"),
                             proc.udp))
    counters = proc.counters()
    assert proc.returncode == 0
    assert counters["parse_errors"] == 3
    assert counters["dropped"] == 1
    assert counters["answered_400"] == 2
    assert counters["too_large"] == 1
    assert counters["internal_errors"] == 0
    assert counters["requests_by_method"]["INVITE"] == 1
    assert counters["requests_by_method"]["OPTIONS"] >= 1  # the fixture's readiness probes
    # Each request got at least its final answer (an INVITE may get a 100 Trying too).
    assert counters["sent"] >= counters["received"] + counters["answered_400"]


def run_serve(*overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmask", "serve", "--set", "api.listen=null",
                           *overrides], capture_output=True, text=True, cwd=REPO, timeout=30)


def test_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((LOOPBACK, port))
        result = run_serve("--set", f"sip.listen=[udp://{LOOPBACK}:{port}]",
                           "--set", f"store.path={tmp_path / 's.lmdb'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"sipmask: cannot listen on udp://{LOOPBACK}:{port}: Address already in use"]


def test_address_not_local_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never assigned here, so bind() fails; no packet
    # is sent anywhere.
    result = run_serve("--set", "sip.listen=[tcp://192.0.2.1:5060]",
                       "--set", f"store.path={tmp_path / 's.lmdb'}")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sipmask: cannot listen on tcp://192.0.2.1:5060")


# -- nothing a peer sends can crash the process ---------------------------------------------



def mutations(seed: bytes, count: int) -> Iterator[bytes]:
    rng = random.Random(4475)
    for _ in range(count):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data))
            op = rng.random()
            if op < 0.4:
                data[i] = rng.randrange(256)
            elif op < 0.7:
                del data[i:i + rng.randint(1, 20)]
            else:
                data[i:i] = rng.choice([b"\r\n", b":", b";", b"<", b",", b" ", b"\x00", b"%"])
        yield bytes(data)


def test_torture_corpus_and_mutations_never_crash(serve) -> None:  # type: ignore[no-untyped-def]
    proc: ServeProcess = serve()
    corpus = sorted(CORPUS.rglob("*.dat")) + sorted(CORPUS.rglob("*.sip"))
    assert len(corpus) >= 40
    with udp_socket() as s:
        for path in corpus:
            s.sendto(path.read_bytes()[:65000], proc.udp)
        for data in mutations(options_request(proc.udp), 400):
            s.sendto(data, proc.udp)
        # A destination we must not use: a name (DNS on the hot path) via maddr; it is not
        # followed (the answer goes to the source, see the reflection test above).
        s.sendto(broken("Via", "SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKm;"
                        "maddr=no.such.host.invalid", proc.udp), proc.udp)
    for path in corpus:
        with socket.create_connection(proc.tcp) as sock:
            sock.sendall(path.read_bytes())
    time.sleep(0.3)
    assert response_of(udp_exchange(options_request(proc.udp), proc.udp)).status == 200
    with socket.create_connection(proc.tcp) as sock:
        sock.sendall(tcp_options(proc, sock, "after"))
        assert [r.status for r in tcp_read(sock, 1)] == [200]
    counters = proc.counters()
    assert proc.returncode == 0
    assert counters["internal_errors"] == 0, proc.stderr()[-3000:]
    assert counters["parse_errors"] > 0


# -- the TCP shell in-process: idle timeout, connection limit, outgoing reuse --------------
class Collect:
    """A sink that records what the shell delivers."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, tuple[str, int]]] = []

    def message_received(self, message: object, source: tuple[str, int],
                         transport: str) -> None:
        self.messages.append((type(message).__name__, source))

    def transport_failed(self, dest: tuple[str, int], transport: str) -> None:
        self.messages.append(("failed", dest))


def test_tcp_idle_connections_are_closed_and_limit_is_kept() -> None:
    async def scenario() -> SipCounters:
        counters = SipCounters()
        endpoint = Endpoint("tcp", LOOPBACK, free_port())
        shell = await open_tcp(endpoint, Collect(), counters, 65535, idle_timeout=0.3,
                               limits=InboundLimits(max_connections=2))
        try:
            streams = [await asyncio.open_connection(LOOPBACK, endpoint.port)
                       for _ in range(3)]
            # The third is over the limit: closed at once without a byte.
            assert await asyncio.wait_for(streams[2][0].read(), 2) == b""
            assert len(shell.connections) == 2
            # The other two go idle and are closed after idle_timeout.
            for reader, _ in streams[:2]:
                assert await asyncio.wait_for(reader.read(), 3) == b""
            assert shell.connections == {}
        finally:
            shell.close()
            for _, writer in streams:
                writer.close()
            await asyncio.sleep(0.05)  # let the transports finish closing
        return counters

    counters = asyncio.run(scenario())
    assert counters.tcp_refused == 1
    assert counters.tcp_idle_closed == 2


def test_tcp_send_opens_one_connection_and_reuses_it() -> None:
    async def scenario() -> tuple[int, bytes, SipCounters]:
        counters = SipCounters()
        accepted: list[asyncio.StreamReader] = []
        writers: list[asyncio.StreamWriter] = []

        async def on_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(reader)
            writers.append(writer)

        peer = await asyncio.start_server(on_peer, LOOPBACK, 0)
        dest = peer.sockets[0].getsockname()[:2]
        shell = await open_tcp(Endpoint("tcp", LOOPBACK, free_port()), Collect(), counters,
                               65535)
        try:
            first = options_request(dest, transport="TCP", call_id="out-1")
            second = options_request(dest, transport="TCP", call_id="out-2")
            shell.send(first, dest)   # queued while the connection opens
            shell.send(second, dest)
            await asyncio.sleep(0.2)
            shell.send(first, dest)   # on the open connection
            await asyncio.sleep(0.2)
            data = await asyncio.wait_for(accepted[0].read(len(first) * 3), 2)
        finally:
            shell.close()
            peer.close()
            for writer in writers:
                writer.close()
            await asyncio.sleep(0.05)  # let the transports finish closing
        return len(accepted), data, counters

    count, data, counters = asyncio.run(scenario())
    assert count == 1
    framer = StreamFramer()
    calls = [parse_message(raw).call_id for raw in framer.feed(data)]
    assert calls == ["out-1", "out-2", "out-1"]
    assert counters.sent == 3


# -- transactions: retransmissions absorbed, Timer J armed by the shell ------------------------
def test_retransmitted_options_is_absorbed_until_timer_j(serve) -> None:  # type: ignore[no-untyped-def]
    # T1 = 10 ms makes Timer J (64*T1 on UDP, RFC 3261 §17.2.2) 0.64 s.
    proc: ServeProcess = serve("--set", "sip.timers.t1_ms=10")
    with udp_socket() as s:
        request = options_request(proc.udp, local=s.getsockname(), branch="z9hG4bKretx1")
        first = udp_exchange(request, proc.udp, sock=s)
        again = udp_exchange(request, proc.udp, sock=s)
        # §17.2.2: the server transaction answers a retransmission with the same response.
        assert first is not None and again == first
        time.sleep(1.0)
        # Timer J fired (the shell's loop.call_at) and the transaction is gone: the same
        # request is new again and gets a fresh answer with its own To tag.
        later = udp_exchange(request, proc.udp, sock=s)
    assert response_of(later).status == 200
    assert response_of(later).to.tag != response_of(first).to.tag


def test_tcp_connection_limit_from_config(serve) -> None:  # type: ignore[no-untyped-def]
    proc: ServeProcess = serve("--set", "sip.tcp_max_connections=1")
    with socket.create_connection(proc.tcp) as first:
        first.sendall(tcp_options(proc, first, "kept"))
        assert [r.status for r in tcp_read(first, 1)] == [200]
        with socket.create_connection(proc.tcp) as second:
            second.settimeout(2.0)
            assert second.recv(100) == b""  # over the limit: closed without a word
    counters = proc.counters()
    assert counters["tcp_refused"] == 1 and counters["tcp_accepted"] == 1


def test_ended_transactions_are_freed_without_the_cycle_collector() -> None:
    """GcFreezer hides survivors from the cycle collector; that is only safe while what a
    request leaves behind is freed by reference counting alone when its transaction ends."""
    config = loader.loads("", [f"sip.listen=[udp://{LOOPBACK}:{free_port()}]",
                               "sip.timers.t1_ms=1", "api.listen=null"])

    async def scenario() -> tuple[int, int, int]:
        server = SipServer(config)
        await server.start()
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((LOOPBACK, 0))
        client.setblocking(False)
        gc.collect()
        gc.freeze()
        before = gc.get_freeze_count()
        try:
            for i in range(500):
                request = options_request(server.udp[0].local, local=client.getsockname(),
                                          branch=f"z9hG4bKgc{i}")
                await loop.sock_sendto(client, request, server.udp[0].local)
                await loop.sock_recv(client, 65535)
            live = len(server.core)
            gc.freeze()   # what GcFreezer does every second
            await asyncio.sleep(0.3)   # Timer J = 64 ms ends every transaction
            return live, gc.get_freeze_count() - before, len(server.core)
        finally:
            gc.unfreeze()
            client.close()
            server.close()
            await asyncio.sleep(0.05)

    live, left, after = asyncio.run(scenario())
    assert live > 0 and after == 0
    # Per transaction about a dozen objects were frozen; all of them must be gone again.
    assert left < 200, f"{left} frozen objects outlived their transactions"


def test_sigint_stops_like_sigterm(serve) -> None:  # type: ignore[no-untyped-def]
    proc: ServeProcess = serve()
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(10) == 0
    assert "sipmask stopped: counters " in proc.stdout()
    assert "Traceback" not in proc.stderr()


def test_tcp_connect_failure_reaches_the_handler_as_transport_failed() -> None:
    """§17.1.4: a request the transport cannot deliver fails its client transaction at
    once; the handler hears TransportFailed rather than waiting for Timer F."""
    config = loader.loads("", [f"sip.listen=[tcp://{LOOPBACK}:{free_port()}]",
                               "api.listen=null"])
    seen: list[object] = []

    class Recorder(DefaultHandler):
        def handle_event(self, event: object) -> None:  # type: ignore[override]
            seen.append(event)

    async def scenario() -> None:
        server = SipServer(config, handler_factory=Recorder)
        await server.start()
        closed = (LOOPBACK, free_port())   # nothing listens there: connection refused
        try:
            request = parse_message(options_request(closed, transport="TCP"))
            assert isinstance(request, Request)
            request.headers.pop_first("via")   # the layer adds its own Via
            server.send_request(request, closed, "tcp")
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
        finally:
            server.close()
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert [type(e) for e in seen][:1] == [TransportFailed]


def test_serve_sweeps_expired_bindings_from_the_store(tmp_path: Path) -> None:
    store = tmp_path / "sweep.lmdb"
    settings = ("--set", f"store.path={store}")
    bound = subprocess.run([sys.executable, "-m", "sipmask", "bind", "axb", "--a", "13800000001",
                            "--b", "13900000002", "--ttl", "1", *settings],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bound.returncode == 0, bound.stderr
    proc = start_serve(tmp_path / "serve", *settings, "--set", "store.sweep_interval_s=1")
    try:
        deadline = time.monotonic() + 15
        swept: list[str] = []
        while not swept and time.monotonic() < deadline:
            time.sleep(0.5)
            audit = subprocess.run([sys.executable, "-m", "sipmask", "audit", *settings],
                                   capture_output=True, text=True, cwd=REPO, timeout=60)
            swept = [line for line in audit.stdout.splitlines() if '"actor": "sweep"' in line]
        assert swept, audit.stdout
        assert proc.alive()
    finally:
        assert proc.stop() == 0, proc.stderr()
