"""10,000 random and mutated datagrams against a running sipmask (a bound X, a live callee
trunk): it stays up, nothing fails inside it, its memory stays bounded, and a good call through
it still connects and is masked afterwards."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port, options_request, udp_exchange
from tests.support.paths import REPO
from tests.support.serve import ServeProcess

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]

SCENARIOS = REPO / "sipp-scenarios"
A, B, X = "13800000001", "13900000002", "700100000000001"
DATAGRAMS = 10_000
SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
       "m=audio 16000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def seeds(port: int) -> list[bytes]:
    """Well-formed messages of every kind the engine handles, for the mutator to break."""
    def request(method: str, i: int, body: str = "", to_tag: str = "") -> bytes:
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        return (f"{method} sip:{X}@127.0.0.1:{port};user=phone SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bKf{i};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{A}@127.0.0.2>;tag=f{i}\r\n"
                f"To: <sip:{X}@127.0.0.1>{to_tag}\r\nCall-ID: fuzz{i}@127.0.0.2\r\n"
                f"CSeq: 1 {method}\r\nContact: <sip:{A}@127.0.0.2:5999>\r\n{ctype}"
                f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
    response = (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKnone\r\n"
                f"From: <sip:{X}@127.0.0.1>;tag=x\r\nTo: <sip:{B}@127.0.0.3>;tag=y\r\n"
                f"Call-ID: nosuch\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    return [request("INVITE", 0, SDP), request("BYE", 1, to_tag=";tag=t"),
            request("ACK", 2, to_tag=";tag=t"), request("CANCEL", 3),
            request("UPDATE", 4, SDP, ";tag=t"), request("REFER", 5, to_tag=";tag=t"),
            request("INFO", 6, to_tag=";tag=t"), options_request(("127.0.0.1", port)),
            response]


def mutations(rng: random.Random, base: list[bytes], n: int) -> Iterator[bytes]:
    for _ in range(n):
        data = bytearray(rng.choice(base))
        kind = rng.randrange(9)
        if kind == 0:
            yield rng.randbytes(rng.randrange(1, 1400))
            continue
        if kind == 1:           # flip bytes
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 2:         # truncate
            del data[rng.randrange(len(data)):]
        elif kind == 3:         # duplicate a slice
            i = rng.randrange(len(data))
            data[i:i] = data[i:i + rng.randrange(1, 200)]
        elif kind == 4:         # lie about the body
            data = bytearray(bytes(data).replace(b"Content-Length: ",
                                                 f"Content-Length: {rng.randrange(99999)}"
                                                 .encode()[:-1], 1))
        elif kind == 5:         # a hostile header
            line = rng.choice([b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKx;maddr=8.8.8.8",
                               b"Max-Forwards: 0", b"Require: 100rel", b"CSeq: 99999999999 BYE",
                               b"To: <sip:" + b"9" * 3000 + b"@x>", b"From: \"" + b"a" * 5000,
                               b"Content-Type: application/sdp"])
            i = bytes(data).find(b"\r\n") + 2
            data[i:i] = line + b"\r\n"
        elif kind == 6:         # new Call-ID / branch so it is a new transaction
            tag = str(rng.randrange(10**9)).encode()
            data = bytearray(bytes(data).replace(b"fuzz", b"fz" + tag, 1)
                             .replace(b"z9hG4bKf", b"z9hG4bKr" + tag, 1))
        elif kind == 7:         # garbage SDP
            data = bytearray(bytes(data).replace(b"m=audio 16000", rng.choice(
                [b"m=audio 0", b"m=video 1 RTP/AVP", b"m=audio 70000 RTP/AVP 0", b"m="])))
        else:                   # lower-case / compact headers
            data = bytearray(bytes(data).replace(b"Call-ID:", b"i:").replace(b"Via:", b"v:"))
        yield bytes(data[:65000])


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_fuzzed_datagrams_then_a_good_call(serve: Callable[..., ServeProcess],
                                          tmp_path: Path) -> None:
    store = tmp_path / "fuzz.lmdb"
    callee_port = free_port("127.0.0.3")
    subprocess.run([sys.executable, "-m", "sipmask", "bind", "axb", "--a", A, "--b", B,
                    "--x", X, "--ttl", "0", "--set", f"store.path={store}"],
                   check=True, capture_output=True, cwd=REPO, timeout=60)
    server = serve("--set", f"store.path={store}",
                   "--set", f"trunks.carrier.outbound=udp://127.0.0.3:{callee_port}",
                   "--set", "media.ports=43000-44999", "--set", "log.level=error",
                   "--set", "sip.ring_timeout_s=1",
                   # Fuzzed INVITEs that route become real leg-B attempts at the (not yet
                   # running) callee; a short T1 lets Timer B end them (64*T1 = 3.2 s)
                   # before the good call, so the callee sees no stale INVITE or CANCEL.
                   "--set", "sip.timers.t1_ms=50")
    before = rss_kb(server.proc.pid)
    rng = random.Random(4475)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.2", 0))
        s.setblocking(False)
        for data in mutations(rng, seeds(server.port), DATAGRAMS):
            s.sendto(data, server.udp)
            sent += 1
            if sent % 200 == 0:
                time.sleep(0.02)   # a flood, not a socket-buffer overflow test
                with_drained(s)
    assert sent == DATAGRAMS
    time.sleep(5.0)   # ring timeouts, then Timer B, of fuzzed INVITEs that were routed
    assert server.alive(), server.stderr()[-3000:]
    after = rss_kb(server.proc.pid)
    assert after - before < 150_000, (before, after)
    answer = udp_exchange(options_request(server.udp), server.udp, timeout=2.0)
    assert answer is not None and answer.startswith(b"SIP/2.0 200")

    callee = subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / "callee.xml"), "-i", "127.0.0.3", "-mi", "127.0.0.3",
         "-mp", "18000", "-p", str(callee_port), "-m", "1", "-nostdin", "-timeout", "30s",
         "-trace_err"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    caller = subprocess.run(
        ["sipp", f"127.0.0.1:{server.port}", "-sf", str(SCENARIOS / "caller.xml"),
         "-i", "127.0.0.2", "-mi", "127.0.0.2", "-mp", "16000", "-p", "0", "-key", "caller", A,
         "-key", "x", X, "-m", "1", "-d", "200", "-nostdin", "-timeout", "30s",
         "-cid_str", "callerleg-%u-%p@%s"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    callee_out, _ = callee.communicate(timeout=30)
    assert caller.returncode == 0 and callee.returncode == 0, (
        caller.stdout[-2000:] + callee_out[-2000:] + server.stderr()[-3000:])
    counters = server.counters()
    assert counters["internal_errors"] == 0, server.stderr()[-3000:]
    assert counters["parse_errors"] > 1000


def with_drained(sock: socket.socket) -> None:
    """Read and drop whatever sipmask answered, so our receive buffer never fills."""
    while True:
        try:
            sock.recv(65535)
        except BlockingIOError:
            return
