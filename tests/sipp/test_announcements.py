"""Announcements through a real `sipmask serve`, SIPp on both sides (the bench of
tests/support/sipp.py) with the default config's packaged prompts (issue 15; CONTRACT
"SIP behaviour"): the caller of an unbound X gets early media (183 with sipmask's SDP)
before the 404; a caller dialling an AXE X alone gets the extension prompt and keys the
extension by INFO application/dtmf-relay, then reaches A."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime

import pytest

from sipmask.config.schema import HostPort
from sipmask.media.prompt import announcement
from tests.support.sipp import STRANGER, A, Bench, X, finish

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]


def test_an_unbound_x_gets_the_announcement_as_early_media_before_the_404(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory()
    # caller_unbound_prompt.xml fails without the 183 and its SDP.
    finish(bench, None, bench.caller("caller_unbound_prompt.xml", 1, x="700100000000999"))
    [record] = bench.cdrs()
    assert (record["sip_status"], record["unconnected_cause"]) == (404, "no_binding")
    # The 404 waited for the packaged announcement to play out.
    prompt = announcement("unbound", "default")
    assert prompt is not None
    took = (datetime.fromisoformat(str(record["end_at"]))
            - datetime.fromisoformat(str(record["invite_at"]))).total_seconds()
    assert took >= prompt.duration_s - 0.5, took


def test_the_axe_x_alone_prompts_and_info_keys_reach_a(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory(bind=False)
    bench.cli("bind", "axe", "--a", A, "--x", X, "--ext", "0042", "--ttl", "0")
    # callee_a.xml fails unless the Request-URI is A and From carries X.
    callee = bench.callee("callee_a.xml", 1)
    finish(bench, callee, bench.caller("caller_axe_prompt.xml", 1, "-d", "200",
                                       caller=STRANGER))
    [record] = bench.cdrs()
    assert (record["x"], record["callee"], record["direction"], record["sip_status"]) == (
        X, A, "n_to_a", 200)


@pytest.mark.rtpengine
def test_the_same_through_rtpengine(rtpengine_ng: HostPort,
                                    bench_factory: Callable[..., Bench]) -> None:
    """`media.backend: rtpengine`: the 183's SDP is rtpengine's (early answer), the prompt
    its `play media`; the keyed call joins the same rtpengine call. (serve gives rtpengine
    no DTMF log address: INFO keys, as here.)"""
    bench = bench_factory("--set", "media.backend=rtpengine",
                          "--set", f"media.rtpengine.ng={rtpengine_ng}", bind=False)
    bench.cli("bind", "axe", "--a", A, "--x", X, "--ext", "0042", "--ttl", "0")
    finish(bench, None, bench.caller("caller_unbound_prompt.xml", 1, x="700100000000999"))
    callee = bench.callee("callee_a.xml", 1)
    finish(bench, callee, bench.caller("caller_axe_prompt.xml", 1, "-d", "200",
                                       caller=STRANGER))
    rows = sorted((r["sip_status"], r["unconnected_cause"]) for r in bench.cdrs())
    assert rows == [(200, "none"), (404, "no_binding")]
