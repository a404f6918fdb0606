"""A trunk that cannot be reached, through a real `sipmask serve`.

A trunk whose name does not resolve (RFC 3263: nothing to try) or whose send fails soon
(a TCP connection refused) must end the call at once: 503 to the caller, a CDR saying
`trunk_unreachable` (CONTRACT "Call detail records"), and no call left in the engine
(`sipmask_active_calls` back to 0). Before the shell performed the engine's actions after
the engine returned (DESIGN rule 15), the failure reached the engine before it knew its
transaction: the caller heard 408 after ring_timeout_s and the call stayed for ever.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from sipmask.sip.message import Response
from sipmask.sip.parser import parse_message
from tests.support.net import LOOPBACK, free_port
from tests.support.serve import ServeProcess, sipmask_cli

A, B, X = "13800000001", "13900000002", "700100000000001"


def invite(target: tuple[str, int], local: tuple[str, int], call_id: str) -> bytes:
    sdp = (f"v=0\r\no=- 1 1 IN IP4 {local[0]}\r\ns=-\r\nc=IN IP4 {local[0]}\r\nt=0 0\r\n"
           f"m=audio 16000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")
    return (f"INVITE sip:{X}@{target[0]}:{target[1]};user=phone SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{call_id};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:{A}@{local[0]}>;tag=ft1\r\n"
            f"To: <sip:{X}@{target[0]}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
            f"Contact: <sip:{A}@{local[0]}:{local[1]}>\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}"
            ).encode()


def final_response(sock: socket.socket, within: float) -> tuple[Response, float]:
    """The first final response on `sock`, and how long it took."""
    start = time.monotonic()
    while True:
        left = within - (time.monotonic() - start)
        assert left > 0, f"no final response within {within} s"
        sock.settimeout(left)
        data, _ = sock.recvfrom(65535)
        message = parse_message(data)
        assert isinstance(message, Response)
        if message.status >= 200:
            return message, time.monotonic() - start


def active_calls(api: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith("sipmask_active_calls "):
            return float(line.split()[1])
    raise AssertionError("no sipmask_active_calls in /metrics")


# A name under `invalid` never resolves, and no query for it leaves the machine (RFC 6761
# §6.4, transport/resolver.SystemDns): the trunk has no target at all.
@pytest.mark.parametrize("outbound", ["udp://sbc.carrier.invalid:5060",
                                      f"tcp://{LOOPBACK}:9"])
def test_unreachable_trunk_gets_503_at_once(serve: Callable[..., ServeProcess],
                                            tmp_path: Path, outbound: str) -> None:
    store = tmp_path / "calls.lmdb"
    sipmask_cli(store, "bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0")
    api = free_port()
    server = serve("--set", f"store.path={store}", "--set", f"api.listen=127.0.0.1:{api}",
                   "--set", f"trunks.carrier.outbound={outbound}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.sendto(invite(server.udp, sock.getsockname(), "unreach-1"), server.udp)
        # ring_timeout_s is 60 by default: a 503 within 5 s is the failure itself.
        response, took = final_response(sock, within=5.0)
    assert response.status == 503, response.status
    assert took < 5.0
    deadline = time.monotonic() + 5
    while active_calls(api) != 0:
        assert time.monotonic() < deadline, "the call stayed in the engine"
        time.sleep(0.1)
    assert server.stop() == 0, server.stderr()
    records = [json.loads(line) for line in
               sipmask_cli(store, "cdr", "list", "--tenant", "demo").splitlines() if line]
    assert [(r["sip_status"], r["unconnected_cause"]) for r in records] == \
        [(503, "trunk_unreachable")]
