"""Masked calls through a real `sipmask serve`, SIPp on both sides (tests/support/sipp.py:
the caller on 127.0.0.2, the callee on 127.0.0.3, sipmask on 127.0.0.1).

Every scenario carries privacy checks (see sipp-scenarios/): the callee fails the call if the
caller's number, address, Call-ID, name, UA or media port arrives, the caller fails it if the
callee's come back. SIPp's exit status is the verdict; CDRs are read back with
`sipmask cdr list`.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from tests.support.sipp import STRANGER, A, B, Bench, X, finish

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]


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
