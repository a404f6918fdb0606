"""The same masked SIPp calls with `media.backend: rtpengine`: the engine's one code path
drives the real daemon (userspace mode) instead of the embedded relay."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support.rtpengine import Daemon
from tests.support.sipp import A, B, Bench, X, finish

pytestmark = [pytest.mark.sipp, pytest.mark.rtpengine]


def test_masked_calls_through_rtpengine(daemon: Daemon,
                                        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory("--set", "media.backend=rtpengine",
                          "--set", f"media.rtpengine.ng={daemon.ng}")
    callee = bench.callee("callee.xml", 3)
    caller = bench.caller("caller.xml", 3, "-d", "300")
    finish(bench, callee, caller)
    records = bench.cdrs()
    assert [(r["caller"], r["callee"], r["sip_status"]) for r in records] == [(A, B, 200)] * 3
    assert all(r["x"] == X for r in records)
