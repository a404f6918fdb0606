"""A trunk with two targets through a real `sipmask serve` and SIPp (issue 14 §4,
RFC 3263 §4.3): the first target, on 127.0.0.3, is down (nothing listens there, or it
answers 503) and the call reaches the second, a SIPp callee on 127.0.0.4; with probing on,
a target that does not answer OPTIONS is taken out, so the next call goes straight to the
live one. Timeouts are small so the tests take seconds."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.paths import SIPP_SCENARIOS
from tests.support.sipp import Bench, finish

pytestmark = pytest.mark.sipp

FIRST_IP, SECOND_IP = "127.0.0.3", "127.0.0.4"


def two_targets(first: int, second: int, *, probe_s: float,
                failover_ms: int) -> tuple[str, ...]:
    return ("--set", f"trunks.carrier.outbound=[udp://{FIRST_IP}:{first}, "
                     f"udp://{SECOND_IP}:{second}]",
            "--set", f"trunks.carrier.probe_interval_s={probe_s}",
            "--set", f"trunks.carrier.failover_timeout_ms={failover_ms}")


def sipp_at(tmp: Path, ip: str, port: int, scenario: str,
            *extra: str) -> subprocess.Popen[str]:
    """A SIPp callee on `ip`:`port` (Bench.callee's options, on another address)."""
    return subprocess.Popen(
        ["sipp", "-sf", str(SIPP_SCENARIOS / scenario), "-i", ip, "-mi", ip, "-mp", "18000",
         "-p", str(port), "-nostdin", "-timeout", "30s", "-trace_err", *extra],
        cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def methods(datagrams: list[bytes]) -> list[str]:
    return [d.split(b" ", 1)[0].decode() for d in datagrams]


@pytest.mark.parametrize("first_down", ["nothing_listens", "answers_503"])
def test_the_call_reaches_the_second_target_when_the_first_is_down(
        bench_factory: Callable[..., Bench], tmp_path: Path, first_down: str) -> None:
    first, second = free_port(FIRST_IP), free_port(SECOND_IP)
    bench = bench_factory(*two_targets(first, second, probe_s=0, failover_ms=300))
    refusing = None
    if first_down == "answers_503":
        refusing = sipp_at(tmp_path, FIRST_IP, first, "callee_unavailable.xml", "-m", "1")
    callee = sipp_at(tmp_path, SECOND_IP, second, "callee.xml", "-m", "1")
    caller = bench.caller("caller.xml", 1)
    finish(bench, callee, caller)
    if refusing is not None:
        finish(bench, refusing, caller)             # it got the INVITE and said 503
    assert [(r["sip_status"], r["unconnected_cause"]) for r in bench.cdrs()] == [(200, "none")]


def test_probing_takes_a_dead_target_out_so_the_call_goes_straight_to_the_live_one(
        bench_factory: Callable[..., Bench], tmp_path: Path) -> None:
    first, second = free_port(FIRST_IP), free_port(SECOND_IP)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind((FIRST_IP, first))           # takes the packets, never answers
        live = sipp_at(tmp_path, SECOND_IP, second, "callee_probed.xml")
        try:
            bench = bench_factory(*two_targets(first, second, probe_s=0.5, failover_ms=1000))
            heard = wait_for_probes(dead, 2, within=10.0)
            # The second probe goes out in the round that found the first unanswered for
            # failover_timeout_ms: the target is down by then.
            assert "trunk.target_down" in bench.server.stderr(), bench.server.stderr()
            caller = bench.caller("caller.xml", 1)
            heard += wait_for_probes(dead, 0, within=0.2)
        finally:
            live.send_signal(signal.SIGUSR1)   # ends after its calls (each probe is one)
        finish(bench, live, caller)
    assert "INVITE" not in methods(heard), methods(heard)
    assert set(methods(heard)) == {"OPTIONS"}
    assert [(r["sip_status"], r["unconnected_cause"]) for r in bench.cdrs()] == [(200, "none")]


def wait_for_probes(sock: socket.socket, count: int, within: float) -> list[bytes]:
    """What arrives on `sock` until `count` OPTIONS probes came (0: until `within` passed
    without a datagram)."""
    heard: list[bytes] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            heard.append(sock.recv(65535))
        except TimeoutError:
            break
        if count and len(probes(heard)) >= count:
            return heard
    assert not count, f"{count} probes expected, heard {methods(heard)}"
    return heard


def probes(datagrams: list[bytes]) -> set[bytes]:
    """The OPTIONS probes among `datagrams`, by Call-ID (UDP retransmissions are one)."""
    return {line for d in datagrams if d.startswith(b"OPTIONS ")
            for line in d.split(b"\r\n") if line.lower().startswith(b"call-id:")}
