"""1,000 INVITEs whose SDP the relay refuses, over UDP to a real `sipmask serve`: each gets
its 488 or 400 and no relay port stays in use (/metrics), and the next call still gets
ports from the range. Before the fix each refused offer kept its port pairs for ever, and
one offer with 600 m= lines took the whole range (the next call got 503).

The caller is a plain socket on 127.0.0.2; leg B goes to a socket on 127.0.0.3 that plays
the trunk (it answers the one good call with 486).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sipmask.media.backend import MAX_MEDIA_LINES
from tests.support.net import free_port
from tests.support.serve import ServeProcess, sipmask_cli

A, B, X = "13800000001", "13900000002", "700100000000001"
CALLER_IP, TRUNK_IP = "127.0.0.2", "127.0.0.3"
MEDIA = (45000, 45399)          # 200 pairs: one 600-line offer used to take them all


def sdp(*ports: int, head: str = f"c=IN IP4 {CALLER_IP}\r\n") -> bytes:
    media = "".join(f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n" for port in ports)
    return f"v=0\r\no=- 1 1 IN IP4 {CALLER_IP}\r\ns=-\r\n{head}t=0 0\r\n{media}".encode()


REFUSED: list[tuple[bytes, int]] = [
    (sdp(4000).replace(b"4000 RTP", b"4000/2 RTP"), 488),        # layered ports
    (sdp(*range(4000, 5200, 2)), 488),                              # 600 m= lines
    (sdp(*range(4000, 4002 + 2 * MAX_MEDIA_LINES, 2)), 488),       # one line over the cap
    (sdp(4000).replace(b"4000", b"99999"), 400),                    # a port out of range
    (b"not an SDP body\r\n", 400),                                  # garbage
    (sdp(4000, head="c=ATM NSAP 47.0005\r\n"), 488),                # not an IN network
]


def invite(server: ServeProcess, local: tuple[str, int], n: int, body: bytes) -> bytes:
    host, port = server.udp
    head = (f"INVITE sip:{X}@{host}:{port};user=phone SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-refused-{n};rport\r\n"
            f"From: <sip:{A}@{local[0]};user=phone>;tag=a{n}\r\n"
            f"To: <sip:{X}@{host}:{port};user=phone>\r\n"
            f"Call-ID: refused-{n}@{local[0]}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:{A}@{local[0]}:{local[1]}>\r\nMax-Forwards: 70\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def ack(server: ServeProcess, local: tuple[str, int], n: int, response: bytes) -> bytes:
    """RFC 3261 §17.1.1.3: the ACK of a non-2xx final response, in the INVITE's transaction."""
    host, port = server.udp
    to = re.search(rb"^To: (.*)\r$", response, re.M | re.I)
    assert to is not None
    return (f"ACK sip:{X}@{host}:{port};user=phone SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK-refused-{n};rport\r\n"
            f"From: <sip:{A}@{local[0]};user=phone>;tag=a{n}\r\n"
            f"To: {to.group(1).decode()}\r\nCall-ID: refused-{n}@{local[0]}\r\n"
            f"CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def status_and_call(data: bytes) -> tuple[int, str]:
    status = int(data.split(b" ", 2)[1])
    call_id = re.search(rb"^(?:Call-ID|i): *(\S+)\r$", data, re.M | re.I)
    assert call_id is not None
    return status, call_id.group(1).decode()


def metric(api: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name} (\S+)$", body, re.M)
    assert found is not None, body
    return float(found.group(1))


def test_a_thousand_refused_invites_leave_no_relay_port_in_use(
        serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    store = tmp_path / "refused.lmdb"
    sipmask_cli(store, "bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0")
    api = free_port()
    trunk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    trunk.bind((TRUNK_IP, 0))
    trunk.settimeout(5)
    caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller.bind((CALLER_IP, 0))
    caller.settimeout(5)
    local = caller.getsockname()
    try:
        server = serve("--set", f"store.path={store}", "--set", f"api.listen=127.0.0.1:{api}",
                       "--set", f"trunks.carrier.outbound=udp://{TRUNK_IP}:"
                                f"{trunk.getsockname()[1]}",
                       "--set", f"media.ports={MEDIA[0]}-{MEDIA[1]}",
                       "--set", "log.level=warning")
        finals: dict[str, int] = {}
        batch = 40
        for start in range(0, 1000, batch):
            wanted = {}
            for n in range(start, start + batch):
                body, status = REFUSED[n % len(REFUSED)]
                wanted[f"refused-{n}@{local[0]}"] = (n, status)
                caller.sendto(invite(server, local, n, body), server.udp)
            while not set(wanted) <= set(finals):
                data = caller.recv(65535)
                status, call_id = status_and_call(data)
                if status < 200 or call_id in finals:
                    continue
                n, expected = wanted[call_id]
                assert status == expected, (n, data[:200])
                finals[call_id] = status
                caller.sendto(ack(server, local, n, data), server.udp)
        assert len(finals) == 1000
        assert metric(api, "sipmask_media_ports_in_use") == 0
        assert metric(api, "sipmask_media_sessions") == 0

        # The next call gets relay ports: leg B's SDP names one from the range.
        caller.sendto(invite(server, local, 5000, sdp(4000)), server.udp)
        leg_b, sipmask_at = trunk.recvfrom(65535)
        assert leg_b.startswith(b"INVITE ")
        port = re.search(rb"^m=audio (\d+) ", leg_b, re.M)
        assert port is not None and MEDIA[0] <= int(port.group(1)) <= MEDIA[1]
        assert metric(api, "sipmask_media_ports_in_use") == 4
        # The trunk refuses it (486); sipmask ACKs, relays 486 to A and frees the media.
        trunk.sendto(busy(leg_b), sipmask_at)
        while True:
            data = caller.recv(65535)
            status, _ = status_and_call(data)
            if status >= 200:
                break
        assert status == 486
        caller.sendto(ack(server, local, 5000, data), server.udp)
        deadline = time.monotonic() + 5
        while metric(api, "sipmask_media_ports_in_use") != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        caller.close()
        trunk.close()


def busy(request: bytes) -> bytes:
    """486 to leg B's INVITE, its Via, From, To, Call-ID and CSeq copied (RFC 3261 §8.2.6.2)."""
    head = request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    copied = [line for line in head[1:]
              if line.split(b":", 1)[0].strip().lower() in (b"via", b"v", b"from", b"f",
                                                             b"call-id", b"i", b"cseq")]
    to = next(line for line in head[1:] if line.split(b":", 1)[0].strip().lower() in (b"to",
                                                                                      b"t"))
    return (b"SIP/2.0 486 Busy Here\r\n" + b"\r\n".join(copied) + b"\r\n" + to +
            b";tag=trunk1\r\nContent-Length: 0\r\n\r\n")
