"""Media timeout end to end: a call that carries no RTP for media.timeout_s is hung up by
sipmask with BYE both ways, and its CDR says release_side sipmask. The same with the
embedded relay and with rtpengine (whose own --timeout stays at 60 s here: what ends the
call is sipmask's watch). SIPp sends no RTP, so the call is silent from the start."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipmask.config.schema import HostPort
from tests.support.serve import ServeProcess
from tests.support.sipp import Bench, finish

pytestmark = pytest.mark.sipp


def silent_call_is_hung_up(bench: Bench, timeout_s: int) -> None:
    callee = bench.callee("callee.xml", 1)        # answers, then waits for the BYE
    started = time.monotonic()
    caller = bench.caller("caller_wait_bye.xml", 1)
    took = time.monotonic() - started
    finish(bench, callee, caller)
    assert timeout_s <= took < timeout_s + 5, took
    [record] = bench.cdrs()
    assert (record["sip_status"], record["release_side"], record["unconnected_cause"]) == \
        (200, "sipmask", "none")
    assert timeout_s - 0.5 <= float(str(record["duration_s"])) < timeout_s + 5


def test_silent_call_times_out_through_the_relay(serve: Callable[..., ServeProcess],
                                                 tmp_path: Path) -> None:
    silent_call_is_hung_up(Bench(serve, tmp_path, "--set", "media.timeout_s=2"), 2)


@pytest.mark.rtpengine
def test_silent_call_times_out_through_rtpengine(rtpengine_ng: HostPort,
                                                 serve: Callable[..., ServeProcess],
                                                 tmp_path: Path) -> None:
    bench = Bench(serve, tmp_path, "--set", "media.timeout_s=2",
                  "--set", "media.backend=rtpengine",
                  "--set", f"media.rtpengine.ng={rtpengine_ng}")
    silent_call_is_hung_up(bench, 2)
