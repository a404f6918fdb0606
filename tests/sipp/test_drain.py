"""SIGTERM drains: new INVITEs get 503 with Retry-After while the call in progress keeps going;
after sip.drain_timeout_s sipmask hangs it up with BYE both ways and exits 0, its CDR
saying release_side sipmask."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from tests.support.net import options_request, udp_exchange
from tests.support.paths import SIPP_SCENARIOS
from tests.support.sipp import A, B, Bench

pytestmark = pytest.mark.sipp


def test_sigterm_refuses_new_calls_then_ends_running_ones(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory("--set", "sip.drain_timeout_s=2")
    callee = bench.callee("callee.xml", 1)
    # The caller waits for the BYE sipmask will send it (caller_wait_bye.xml). Its media
    # port is not the usual 16000, which the refused caller below binds.
    caller = subprocess.Popen(
        ["sipp", f"127.0.0.1:{bench.server.port}",
         "-sf", str(SIPP_SCENARIOS / "caller_wait_bye.xml"),
         "-i", "127.0.0.2", "-mi", "127.0.0.2", "-mp", "16100", "-p", "0", "-key", "caller", A,
         "-key", "x", "700100000000001", "-m", "1", "-nostdin", "-timeout", "30s",
         "-cid_str", "callerleg-%u-%p@%s"],
        cwd=bench.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.5)                      # the call is up
        bench.server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = bench.caller("caller_expect_503.xml", 1)
        assert refused.returncode == 0, refused.stdout[-2000:]
        assert udp_exchange(options_request(bench.server.udp), bench.server.udp) is not None
        assert bench.server.proc.wait(15) == 0
        caller_out, _ = caller.communicate(timeout=20)
        callee_out, _ = callee.communicate(timeout=20)
    finally:
        for proc in (caller, callee):
            if proc.poll() is None:
                proc.kill()
    # The callee scenario expects the BYE too (it ends on BYE / 200).
    assert caller.returncode == 0, caller_out[-2000:] + bench.server.stderr()[-2000:]
    assert callee.returncode == 0, callee_out[-2000:]
    records = bench.cdrs()
    by_status = sorted((r["sip_status"], r["release_side"], r["callee"]) for r in records)
    # The draining 503 is counted, not recorded (README "CDRs").
    assert by_status == [(200, "sipmask", B)]
