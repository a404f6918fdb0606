"""Masked calls through a real `sipmask serve`, SIPp on both sides.

The caller (leg A) runs on 127.0.0.2, the callee (leg B, the trunk's outbound) on 127.0.0.3,
sipmask on 127.0.0.1. Every scenario carries privacy checks (see sipp-scenarios/): the callee
fails the call if the caller's number, address, Call-ID, name, UA or media port arrives, the
caller fails it if the callee's come back. SIPp's exit status is the verdict; CDRs are read
back with `sipmask cdr list`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, ServeProcess, free_port

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]

SCENARIOS = REPO / "sipp-scenarios"
CALLER_IP, CALLEE_IP = "127.0.0.2", "127.0.0.3"
A, B, X, STRANGER = "13800000001", "13900000002", "700100000000001", "13700000003"


class Bench:
    """One sipmask with a bound X, a callee port on 127.0.0.3, and SIPp runners."""

    def __init__(self, serve: Callable[..., ServeProcess], tmp_path: Path,
                 *overrides: str, bind: bool = True) -> None:
        self.tmp = tmp_path
        self.store = tmp_path / "calls.lmdb"
        self.callee_port = free_port(CALLEE_IP)
        self.overrides = ("--set", f"store.path={self.store}",
                          "--set", f"trunks.carrier.outbound=udp://{CALLEE_IP}:{self.callee_port}",
                          "--set", "media.ports=41000-41999", *overrides)
        if bind:
            self.cli("bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0")
        self.server = serve(*self.overrides)

    def cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "sipmask", *args,
                                 "--set", f"store.path={self.store}"],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def callee(self, scenario: str, calls: int, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / scenario), "-i", CALLEE_IP, "-mi", CALLEE_IP,
             "-mp", "18000", "-p", str(self.callee_port), "-m", str(calls), "-nostdin",
             "-timeout", "30s", "-trace_err", *extra],
            cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def caller(self, scenario: str, calls: int, *extra: str, caller: str = A,
               x: str = X) -> subprocess.CompletedProcess[str]:
        # The privacy regexps name the caller's media port, so it is fixed; when another
        # SIPp on this machine holds it for a moment, wait and run again.
        for _ in range(3):
            result = self._caller(scenario, calls, *extra, caller=caller, x=x)
            if result.returncode == 0 or "Unable to bind" not in result.stdout + result.stderr:
                return result
            time.sleep(1.0)
        return result

    def _caller(self, scenario: str, calls: int, *extra: str, caller: str,
                x: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sipp", f"127.0.0.1:{self.server.port}", "-sf", str(SCENARIOS / scenario),
             "-i", CALLER_IP, "-mi", CALLER_IP, "-mp", "16000", "-p", "0",
             "-key", "caller", caller, "-key", "x", x, "-m", str(calls), "-r", "20",
             "-nostdin", "-timeout", "30s", "-cid_str", "callerleg-%u-%p@%s", "-trace_err",
             *extra],
            cwd=self.tmp, capture_output=True, text=True, timeout=60)

    def errors(self) -> str:
        return "\n".join(p.read_text("utf-8", "replace")[-3000:]
                         for p in self.tmp.glob("*_errors.log"))

    def cdrs(self) -> list[dict[str, object]]:
        out = self.cli("cdr", "list", "--tenant", "demo")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def finish(bench: Bench, callee: subprocess.Popen[str] | None,
           caller: subprocess.CompletedProcess[str]) -> None:
    callee_out = ""
    if callee is not None:
        try:
            callee_out, _ = callee.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            callee.kill()
            callee_out, _ = callee.communicate()
    detail = (f"caller:\n{caller.stdout[-1500:]}{caller.stderr[-500:]}\ncallee:\n"
              f"{callee_out[-1500:]}\nerrors:\n{bench.errors()}\nsipmask:\n"
              f"{bench.server.stderr()[-3000:]}")
    assert caller.returncode == 0, detail
    if callee is not None:
        assert callee.returncode == 0, detail


@pytest.fixture
def bench_factory(serve: Callable[..., ServeProcess], tmp_path: Path
                  ) -> Callable[..., Bench]:
    def make(*overrides: str, bind: bool = True) -> Bench:
        return Bench(serve, tmp_path, *overrides, bind=bind)
    return make


def test_answered_calls_masked_both_ways(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    callee = bench.callee("callee.xml", 5)
    caller = bench.caller("caller.xml", 5, "-d", "300")
    finish(bench, callee, caller)
    records = bench.cdrs()
    assert len(records) == 5
    for r in records:
        assert (r["x"], r["caller"], r["callee"], r["direction"]) == (X, A, B, "a_to_b")
        assert (r["sip_status"], r["release_side"], r["unconnected_cause"]) == (
            200, "caller", "none")
        assert r["answer_at"] is not None and float(str(r["duration_s"])) >= 0.2


def test_callee_busy_status_passes_through_without_its_headers(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    callee = bench.callee("callee_busy.xml", 3)
    caller = bench.caller("caller_expect_486.xml", 3)
    finish(bench, callee, caller)
    assert [(r["sip_status"], r["unconnected_cause"]) for r in bench.cdrs()] == [
        (486, "callee_failed")] * 3


def test_caller_cancels_while_ringing(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    callee = bench.callee("callee_ring.xml", 3)
    caller = bench.caller("caller_cancel.xml", 3, "-d", "300")
    finish(bench, callee, caller)
    assert [(r["sip_status"], r["release_side"]) for r in bench.cdrs()] == [
        (487, "caller")] * 3


def test_callee_hangs_up(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    callee = bench.callee("callee_hangup.xml", 3, "-d", "300")
    caller = bench.caller("caller_wait_bye.xml", 3)
    finish(bench, callee, caller)
    assert [r["release_side"] for r in bench.cdrs()] == ["callee"] * 3


def test_unknown_x_is_404_and_stranger_is_403(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    finish(bench, None, bench.caller("caller_expect_404.xml", 2, x="700100000000999"))
    finish(bench, None, bench.caller("caller_expect_403.xml", 2, caller=STRANGER))
    causes = sorted((r["sip_status"], r["unconnected_cause"]) for r in bench.cdrs())
    assert causes == [(403, "not_allowed")] * 2 + [(404, "no_binding")] * 2


def test_ring_timeout_cancels_the_callee(bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory("--set", "sip.ring_timeout_s=1")
    callee = bench.callee("callee_ring.xml", 2)
    caller = bench.caller("caller_expect_408.xml", 2)
    finish(bench, callee, caller)
    assert [(r["sip_status"], r["unconnected_cause"], r["release_side"])
            for r in bench.cdrs()] == [(408, "timeout", "sipmask")] * 2
