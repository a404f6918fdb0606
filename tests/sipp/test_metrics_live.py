"""/metrics on a running sipmask after real calls: outcomes counted, gauges (calls,
transactions, media sessions) back to zero once the calls and their transactions are over,
and no number in any label."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable

import pytest

from tests.support.net import free_port
from tests.support.sipp import Bench, finish

pytestmark = pytest.mark.sipp

SAMPLE = re.compile(r"^(\w+)(\{[^}]*\})? (\S+)$")


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    body = text.decode()
    assert not re.search(r"\d{7,}", "".join(re.findall(r"\{[^}]*\}", body))), body
    out: dict[str, float] = {}
    for line in body.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            out[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return out


def test_metrics_after_calls(bench_factory: Callable[..., Bench]) -> None:
    api = free_port()
    # T1 = 50 ms: every transaction (Timer J/K/D/M = 64*T1 at most) is gone within ~3.2 s.
    bench = bench_factory("--set", f"api.listen=127.0.0.1:{api}",
                          "--set", "sip.timers.t1_ms=50")
    callee = bench.callee("callee.xml", 3)
    caller = bench.caller("caller.xml", 3, "-d", "200")
    finish(bench, callee, caller)
    busy = bench.callee("callee_busy.xml", 1)
    finish(bench, busy, bench.caller("caller_expect_486.xml", 1))
    finish(bench, None, bench.caller("caller_expect_404.xml", 1, x="700100000000999"))

    # Every transaction ends within 64*T1 = 3.2 s, except the leg-B INVITE client
    # transaction of the busy call: Timer D is at least 32 s on UDP whatever T1 is
    # (RFC 3261 §17.1.1.2), so that one may still absorb 486 retransmissions.
    deadline = time.monotonic() + 10
    while True:
        seen = scrape(api)
        live = {k: v for k, v in seen.items() if k.startswith("sipmask_transactions") and v}
        if set(live) <= {'sipmask_transactions{kind="invite_client"}'} and \
                live.get('sipmask_transactions{kind="invite_client"}', 0) <= 1:
            break
        assert time.monotonic() < deadline, live
        time.sleep(0.5)
    assert seen['sipmask_calls_total{outcome="answered"}'] == 3
    assert seen['sipmask_calls_total{outcome="busy"}'] == 1
    assert seen['sipmask_refusals_total{reason="no_binding"}'] == 1
    assert seen["sipmask_active_calls"] == 0
    assert seen["sipmask_media_sessions"] == 0
    assert seen["sipmask_media_ports_in_use"] == 0
    assert seen["sipmask_call_setup_seconds_count"] >= 3   # to the first 18x or 2xx relayed
    # Media services (issue 15): exported from the relay's counters, without labels.
    assert seen["sipmask_recordings_started_total"] == 0      # no binding records
    assert seen["sipmask_recordings_failed_total"] == 0
    assert seen["sipmask_recording_queue_bytes"] == 0
    for family in ("media_prompt_packets", "media_prompts_unplayable", "media_digits",
                   "recording_writes_dropped", "recording_dropped_bytes"):
        assert f"sipmask_{family}_total" in seen, family
