"""SIP over TLS (RFC 3261 §26.2): `tls://` listeners and trunks, `sip.tls.cert/key/ca`.

Certificates are made per test session with the `openssl` CLI: a test CA, sipmask's server
certificate, a trunk's, a client's (all for IP 127.0.0.1), and a rogue client certificate
from a CA sipmask does not know. Peers are Python `ssl` sockets (Debian's SIPp is built
without TLS). `sipmask serve` runs as a subprocess except where a test needs the server's
own methods (connection reuse).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipmask.config import loader
from sipmask.server import SipServer
from sipmask.sip.message import Request, Response, build_response
from sipmask.sip.parser import StreamFramer, parse_message
from sipmask.sip.uri import parse_uri
from tests.support.net import LOOPBACK, free_port, options_request, udp_block_free
from tests.support.paths import REPO
from tests.support.serve import ServeProcess, sipmask_cli

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")

A, B, X = "13800000001", "13900000002", "700100000000001"


# -- certificates ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.pem"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def new_key_and_csr(cwd: Path, name: str) -> None:
    openssl(cwd, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")


def new_ca(cwd: Path, name: str) -> None:
    openssl(cwd, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN={name}")


def issue(cwd: Path, name: str, ca: str) -> None:
    new_key_and_csr(cwd, name)
    (cwd / "san.cnf").write_text(f"subjectAltName=IP:{LOOPBACK}\n")
    openssl(cwd, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
            f"{ca}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", "san.cnf")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    cwd = tmp_path_factory.mktemp("pki")
    new_ca(cwd, "ca")
    for name in ("sipmask", "trunk", "client"):
        issue(cwd, name, "ca")
    new_ca(cwd, "rogue-ca")
    issue(cwd, "rogue", "rogue-ca")
    return Pki(cwd)


def client_context(pki: Pki, cert: str | None = None) -> ssl.SSLContext:
    """A client that verifies sipmask against the test CA, presenting `cert` if given."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(pki.cert(cert), pki.key(cert))
    return context


def tls_settings(pki: Pki, *, ca: bool = False) -> tuple[str, ...]:
    settings = ("--set", f"sip.tls.cert={pki.cert('sipmask')}",
                "--set", f"sip.tls.key={pki.key('sipmask')}")
    return settings + (("--set", f"sip.tls.ca={pki.ca}") if ca else ())


def serve_tls(serve: Callable[..., ServeProcess], pki: Pki, *overrides: str,
              ca: bool = False) -> tuple[ServeProcess, tuple[str, int]]:
    """`sipmask serve` on TLS and UDP (for the fixture's readiness probe). TLS first:
    listeners open in order, so an answer over UDP means TLS is listening too."""
    port, tls_port = free_port(), free_port()
    server = serve("--set", f"sip.listen=[tls://{LOOPBACK}:{tls_port},udp://{LOOPBACK}:{port}]",
                   *tls_settings(pki, ca=ca), *overrides, port=port)
    return server, (LOOPBACK, tls_port)


# -- a blocking SIP peer over one stream ------------------------------------------------------
class Stream:
    """Whole SIP messages over one (TLS) socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.framer = StreamFramer()
        self.ready: list[Request | Response] = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = 3.0) -> Request | Response:
        deadline = time.monotonic() + timeout
        while not self.ready:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no SIP message in time")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65535)
            if not chunk:
                raise EOFError("closed by the peer")
            self.ready += [parse_message(raw) for raw in self.framer.feed(chunk)]
        return self.ready.pop(0)

    def response(self, timeout: float = 3.0, *, skip_provisional: bool = True) -> Response:
        while True:
            message = self.read(timeout)
            assert isinstance(message, Response), message
            if not (skip_provisional and message.status < 200):
                return message

    def request(self, timeout: float = 3.0) -> Request:
        message = self.read(timeout)
        assert isinstance(message, Request), message
        return message


def tls_connect(address: tuple[str, int], context: ssl.SSLContext,
                source: str = LOOPBACK) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=3.0, source_address=(source, 0))
    try:
        return context.wrap_socket(raw, server_hostname=LOOPBACK)
    except BaseException:
        raw.close()
        raise


def options_over(sock: ssl.SSLSocket, target: tuple[str, int]) -> Response:
    stream = Stream(sock)
    stream.send(options_request(target, local=sock.getsockname(), transport="TLS"))
    return stream.response()


def refused(address: tuple[str, int], context: ssl.SSLContext) -> bool:
    """Whether sipmask turns this client away (handshake alert or close) unanswered."""
    try:
        with tls_connect(address, context) as sock:
            options_over(sock, address)   # TLS 1.3: the client learns of it on reading
    except (ssl.SSLError, EOFError, ConnectionResetError, BrokenPipeError):
        return True
    return False


# -- tests against `sipmask serve` --------------------------------------------------------------
def test_serve_answers_options_over_tls(serve: Callable[..., ServeProcess], pki: Pki) -> None:
    server, address = serve_tls(serve, pki)
    with tls_connect(address, client_context(pki)) as sock:
        response = options_over(sock, address)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
    assert response.status == 200
    assert response.top_via.transport == "TLS"
    counters = server.counters()
    assert counters["tcp_accepted"] == 1 and counters["tls_failed"] == 0


def test_with_ca_set_only_clients_certified_by_it_are_served(
        serve: Callable[..., ServeProcess], pki: Pki) -> None:
    server, address = serve_tls(serve, pki, ca=True)
    assert refused(address, client_context(pki))                 # no certificate
    assert refused(address, client_context(pki, "rogue"))        # signed by another CA
    with tls_connect(address, client_context(pki, "client")) as sock:
        assert options_over(sock, address).status == 200
    counters = server.counters()
    assert counters["tls_failed"] == 2
    assert counters["requests_by_method"]["OPTIONS"] >= 2        # probe + the certified one


def test_a_tls_handshake_that_hangs_is_closed_at_the_message_deadline(
        serve: Callable[..., ServeProcess], pki: Pki) -> None:
    server, address = serve_tls(serve, pki, "--set", "sip.tcp_message_timeout_s=1")
    mute = socket.create_connection(address, timeout=3.0)
    half = socket.create_connection(address, timeout=3.0)
    with mute, half:
        half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")   # a ClientHello's start
        started = time.monotonic()
        for sock in (mute, half):
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""
            assert 0.9 <= time.monotonic() - started <= 2.0
    counters = server.counters()
    assert counters["tcp_message_timeouts"] == 2


@pytest.mark.parametrize("problem, key", [
    ("no cert", "sip.tls.cert"),
    ("missing cert file", "sip.tls.cert"),
    ("cert not PEM", "sip.tls.cert"),
    ("key not PEM", "sip.tls.key"),
    ("key of another cert", "sip.tls.key"),
    ("ca not PEM", "sip.tls.ca"),
    ("tls trunk without tls listener", "trunks.carrier.outbound"),
])
def test_tls_config_errors_stop_start_up_with_one_line_naming_the_key(
        pki: Pki, tmp_path: Path, problem: str, key: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    port = free_port()
    listen = f"sip.listen=[udp://{LOOPBACK}:{port},tls://{LOOPBACK}:{free_port()}]"
    settings = {
        "no cert": [listen],
        "missing cert file": [listen, f"sip.tls.cert={tmp_path / 'nope.pem'}",
                              f"sip.tls.key={pki.key('sipmask')}"],
        "cert not PEM": [listen, f"sip.tls.cert={garbage}", f"sip.tls.key={pki.key('sipmask')}"],
        "key not PEM": [listen, f"sip.tls.cert={pki.cert('sipmask')}", f"sip.tls.key={garbage}"],
        "key of another cert": [listen, f"sip.tls.cert={pki.cert('sipmask')}",
                                f"sip.tls.key={pki.key('trunk')}"],
        "ca not PEM": [listen, f"sip.tls.cert={pki.cert('sipmask')}",
                       f"sip.tls.key={pki.key('sipmask')}", f"sip.tls.ca={garbage}"],
        "tls trunk without tls listener": [
            f"sip.listen=[udp://{LOOPBACK}:{port}]", f"sip.tls.cert={pki.cert('sipmask')}",
            f"sip.tls.key={pki.key('sipmask')}",
            f"trunks.carrier.outbound=tls://{LOOPBACK}:{free_port()}"],
    }[problem]
    args = [arg for setting in settings for arg in ("--set", setting)]
    result = subprocess.run([sys.executable, "-m", "sipmask", "serve", "--set", "api.listen=null",
                             "--set", f"store.path={tmp_path / 's.lmdb'}", *args],
                            capture_output=True, text=True, cwd=REPO, timeout=15)
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in result.stderr, lines


# -- in-process: requests to a peer reuse its connection ---------------------------------------
@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_requests_to_a_peer_go_out_on_the_connection_it_opened(pki: Pki, transport: str) -> None:
    """RFC 5923's practice (CONTRACT: reuse while open): a request to the address a TCP or
    TLS client connected from is written on that connection, whichever of two listeners it
    came in on; Via names the transport and that transport's first listener's port."""
    ports = [free_port(), free_port()]
    config = loader.loads("", [f"sip.listen=[udp://{LOOPBACK}:{free_port()},"
                               f"{transport}://{LOOPBACK}:{ports[0]},"
                               f"{transport}://{LOOPBACK}:{ports[1]}]", "api.listen=null",
                               f"sip.tls.cert={pki.cert('sipmask')}",
                               f"sip.tls.key={pki.key('sipmask')}"])
    tls = transport == "tls"

    async def scenario() -> tuple[bool, bool, Request, int]:
        server = SipServer(config)
        await server.start()
        reader, writer = await asyncio.open_connection(
            LOOPBACK, ports[1], ssl=client_context(pki) if tls else None,
            server_hostname=LOOPBACK if tls else None, local_addr=("127.0.0.2", 0))
        try:
            source = writer.get_extra_info("sockname")[:2]
            writer.write(options_request((LOOPBACK, ports[1]), local=source,
                                         transport=transport.upper()))
            answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert parse_message(answer).status == 200  # type: ignore[union-attr]
            other = "tcp" if tls else "tls"
            before = server.connected(source, transport), server.connected(source, other)
            request = parse_message(options_request(source, call_id="to-the-peer"))
            assert isinstance(request, Request)
            request.headers.pop_first("via")          # the transaction layer adds its own
            server.send_request(request, source, transport)  # type: ignore[arg-type]
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            received = parse_message(data)
            assert isinstance(received, Request)
            return before[0], before[1], received, server.local_port(transport)  # type: ignore[arg-type]
        finally:
            writer.close()
            server.close()
            await asyncio.sleep(0.05)

    on_it, on_other, received, port = asyncio.run(scenario())
    assert on_it and not on_other
    assert received.call_id == "to-the-peer"
    via = received.top_via
    assert (via.transport, via.host, via.port) == (transport.upper(), LOOPBACK, ports[0])
    assert port == ports[0]


def test_sips_uris_parse() -> None:
    uri = parse_uri(f"sips:{X}@{LOOPBACK}:5061;transport=tls")
    assert (uri.scheme, uri.port) == ("sips", 5061)  # type: ignore[union-attr]


# -- calls to a TLS trunk ---------------------------------------------------------------------
class TlsTrunk:
    """The carrier's side: a TLS server (mutual TLS: sipmask must show a certificate signed
    by the test CA) that plays `script` on the first connection, on a thread."""

    def __init__(self, pki: Pki, script: Callable[[Stream], None], cert: str = "trunk") -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.cert(cert), pki.key(cert))
        context.load_verify_locations(pki.ca)
        context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.script = script
        self.listener = socket.create_server((LOOPBACK, 0))
        self.listener.settimeout(10.0)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.peer_subject: str | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            raw, _ = self.listener.accept()
            with self.context.wrap_socket(raw, server_side=True) as sock:
                cert = sock.getpeercert() or {}
                self.peer_subject = str(cert.get("subject"))
                self.script(Stream(sock))
        except BaseException as exc:   # re-raised in the test by join()
            self.error = exc
        finally:
            self.listener.close()

    def join(self) -> None:
        self.thread.join(15)
        assert not self.thread.is_alive(), "the trunk script did not finish"
        if self.error is not None:
            raise self.error


def call_from_udp(server: ServeProcess) -> int:
    """An INVITE from a UDP caller; the final status it gets."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as caller:
        caller.bind((LOOPBACK, 0))
        caller.settimeout(3.0)
        caller.sendto(invite(server.udp, caller.getsockname(), "UDP"), server.udp)
        while True:
            answer = parse_message(caller.recv(65535))
            assert isinstance(answer, Response)
            if answer.status >= 200:
                return answer.status


def media_ports() -> str:
    for _ in range(50):
        first = random.randrange(45000, 49000, 2)
        if udp_block_free(first, 40):
            return f"{first}-{first + 39}"
    raise RuntimeError("no free media port block")


SDP = (f"v=0\r\no=- 1 1 IN IP4 {LOOPBACK}\r\ns=-\r\nc=IN IP4 {LOOPBACK}\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def invite(target: tuple[str, int], local: tuple[str, int], transport: str) -> bytes:
    body = SDP.format(port=16000).encode()
    return (f"INVITE sip:{X}@{target[0]}:{target[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK{uuid.uuid4().hex}"
            ";rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{A}@{local[0]}>;tag=caller1\r\n"
            f"To: <sip:{X}@{target[0]}>\r\n"
            f"Call-ID: {uuid.uuid4().hex}@caller\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:{A}@{local[0]}:{local[1]};transport={transport.lower()}>\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def in_dialog(method: str, request: bytes, answer: Response, cseq: int,
              local: tuple[str, int], transport: str) -> bytes:
    """ACK or BYE from the caller in the dialog `answer` made (To tag, remote target)."""
    sent = parse_message(request)
    assert isinstance(sent, Request)
    contact = answer.headers.get("contact") or ""
    target = contact[contact.find("<") + 1:contact.find(">")]
    return (f"{method} {target} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} {local[0]}:{local[1]};branch=z9hG4bK{uuid.uuid4().hex}"
            ";rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: {sent.headers.get('from')}\r\n"
            f"To: {answer.headers.get('to')}\r\n"
            f"Call-ID: {sent.call_id}\r\n"
            f"CSeq: {cseq} {method}\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def trunk_answer(request: Request, status: int, trunk: tuple[str, int]) -> bytes:
    body = SDP.format(port=18000).encode() if status == 200 else b""
    extra = (("Contact", f"<sip:{B}@{trunk[0]}:{trunk[1]};transport=tls>"),)
    return build_response(request, status, to_tag="trunk1", extra=extra, body=body,
                          content_type="application/sdp" if body else None).to_bytes()


def call_settings(store: Path, trunk: TlsTrunk) -> tuple[str, ...]:
    sipmask_cli(store, "bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0")
    return ("--set", f"store.path={store}", "--set", f"media.ports={media_ports()}",
            "--set", f"trunks.carrier.outbound=tls://{trunk.address[0]}:{trunk.address[1]}")


def test_a_call_to_a_tls_trunk_reaches_it_and_its_answer_reaches_the_caller(
        serve: Callable[..., ServeProcess], pki: Pki, tmp_path: Path) -> None:
    """Caller over UDP, trunk over TLS with mutual authentication; the trunk is busy. The
    INVITE and the ACK for the 486 (§17.1.1.3, hop by hop) travel the TLS connection."""
    seen: list[Request] = []

    def busy(stream: Stream) -> None:
        request = stream.request()
        seen.append(request)
        stream.send(trunk_answer(request, 486, trunk.address))
        seen.append(stream.request())

    trunk = TlsTrunk(pki, busy)
    server, _ = serve_tls(serve, pki, *call_settings(tmp_path / "call.lmdb", trunk), ca=True)
    status = call_from_udp(server)
    trunk.join()
    assert status == 486
    assert [r.method for r in seen] == ["INVITE", "ACK"]
    assert seen[0].top_via.transport == "TLS"
    assert seen[0].uri.startswith(f"sip:{B}@")
    assert trunk.peer_subject is not None and "sipmask" in trunk.peer_subject


def test_a_trunk_whose_certificate_does_not_chain_to_ca_gets_no_invite(
        serve: Callable[..., ServeProcess], pki: Pki, tmp_path: Path) -> None:
    """sipmask verifies the servers it connects to: a trunk showing a certificate from
    another CA never sees the INVITE, and the caller hears at once (§17.1.4: the transport
    failed), not after Timer B."""
    trunk = TlsTrunk(pki, lambda stream: None, cert="rogue")
    server, _ = serve_tls(serve, pki, *call_settings(tmp_path / "call.lmdb", trunk), ca=True)
    started = time.monotonic()
    status = call_from_udp(server)
    assert status >= 400 and time.monotonic() - started < 2.0   # 408 from the engine today
    with pytest.raises(ssl.SSLError):
        trunk.join()                         # sipmask's alert: unknown CA
    assert server.counters()["tls_failed"] == 1


def test_a_full_call_over_tls_on_both_legs(serve: Callable[..., ServeProcess], pki: Pki,
                                          tmp_path: Path) -> None:
    """Caller and trunk both over TLS: INVITE, 200, ACK, BYE from the caller, 200. The ACK
    and BYE toward the trunk go where the engine's next hop says: the trunk's Contact is
    `;transport=tls`, and sipmask's own Contact must say TLS for the trunk's requests back."""
    seen: list[Request] = []

    def answers(stream: Stream) -> None:
        request = stream.request()
        seen.append(request)
        stream.send(trunk_answer(request, 200, trunk.address))
        ack = stream.request()
        seen.append(ack)
        bye = stream.request()
        seen.append(bye)
        stream.send(build_response(bye, 200).to_bytes())

    trunk = TlsTrunk(pki, answers)
    _server, address = serve_tls(serve, pki, *call_settings(tmp_path / "call.lmdb", trunk),
                                ca=True)
    try:
        with tls_connect(address, client_context(pki, "client")) as sock:
            stream = Stream(sock)
            local = sock.getsockname()[:2]
            request = invite(address, local, "TLS")
            stream.send(request)
            answer = stream.response()
            assert answer.status == 200
            stream.send(in_dialog("ACK", request, answer, 1, local, "TLS"))
            time.sleep(0.2)
            stream.send(in_dialog("BYE", request, answer, 2, local, "TLS"))
            assert stream.response().status == 200
    finally:
        trunk.join()
    assert [r.method for r in seen] == ["INVITE", "ACK", "BYE"]
    contact = seen[0].headers.get("contact") or ""
    assert "transport=tls" in contact.lower() or contact.lower().startswith("<sips:")
