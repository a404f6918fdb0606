"""The B2BUA's remaining call flows through a real `sipmask serve`, SIPp on both sides.

Early media, hold/resume by re-INVITE from either side, UPDATE, INFO (DTMF), 100rel on
leg B only, REFER refused, re-INVITE glare (491), offers in a 2xx (delayed offer), a caller
over TCP, the b_to_a direction and 100 Trying at once. Each scenario pair carries the
privacy checks of every SIPp bench (sipp-scenarios/, tests/support/sipp.py): the callee
fails the call if the caller's number, address, Call-ID, name, UA or media port arrives,
the caller fails it if the callee's come back; the scenarios also check that every SDP
names sipmask's relay (127.0.0.1, media.ports). SIPp's exit status is the verdict; CDRs
are read back with `sipmask cdr list`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipmask.config.schema import HostPort
from tests.support.serve import ServeProcess
from tests.support.sipp import A, B, Bench, X, finish

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]


@pytest.fixture
def bench(serve: Callable[..., ServeProcess], tmp_path: Path) -> Bench:
    return Bench(serve, tmp_path)


def answered(bench: Bench, count: int, release_side: str = "caller",
             direction: str = "a_to_b") -> None:
    records = bench.cdrs()
    assert len(records) == count
    for r in records:
        assert (r["sip_status"], r["release_side"], r["unconnected_cause"], r["direction"]) == (
            200, release_side, "none", direction)
        assert r["answer_at"] is not None


def start_callee(bench: Bench, scenario: str, calls: int) -> subprocess.Popen[str]:
    """The callee's media port is fixed (the privacy regexps name it): a SIPp that exits at
    once could not bind it because another SIPp on this machine holds it; wait, try again."""
    proc = bench.callee(scenario, calls)
    for _ in range(4):
        try:
            proc.wait(0.3)
        except subprocess.TimeoutExpired:
            return proc
        proc.communicate()               # it exited: close its stdout pipe, then try again
        time.sleep(1.0)
        proc = bench.callee(scenario, calls)
    return proc                          # finish() reports (and closes) what it printed


def pair(bench: Bench, callee: str, caller: str, calls: int = 1, *caller_extra: str,
         caller_number: str = A) -> None:
    proc = start_callee(bench, callee, calls)
    finish(bench, proc, bench.caller(caller, calls, *caller_extra, caller=caller_number))


def test_early_media_183_sdp_points_at_the_relay(bench: Bench) -> None:
    pair(bench, "callee_early_media.xml", "caller_early_media.xml", 2, "-d", "100")
    answered(bench, 2)


def test_caller_holds_and_resumes_with_sdp_rewritten_again(bench: Bench) -> None:
    pair(bench, "callee_held.xml", "caller_hold.xml", 2)
    answered(bench, 2)


def test_callee_holds_and_resumes_with_sdp_rewritten_again(bench: Bench) -> None:
    pair(bench, "callee_hold.xml", "caller_held.xml", 2)
    answered(bench, 2)


def test_update_changes_codec_in_the_confirmed_dialog(bench: Bench) -> None:
    pair(bench, "callee_update.xml", "caller_update.xml", 2)
    answered(bench, 2)


def test_info_dtmf_relayed_and_telephone_event_kept(bench: Bench) -> None:
    pair(bench, "callee_info.xml", "caller_info.xml", 2)
    answered(bench, 2)


def test_reliable_180_is_pracked_on_leg_b_and_plain_on_leg_a(bench: Bench) -> None:
    pair(bench, "callee_100rel.xml", "caller_trying.xml", 2)
    answered(bench, 2)


def test_refer_is_refused_and_the_call_goes_on(bench: Bench) -> None:
    pair(bench, "callee.xml", "caller_refer.xml", 2)
    answered(bench, 2)


def test_crossing_reinvites_get_491_and_the_call_survives(bench: Bench) -> None:
    pair(bench, "callee_glare.xml", "caller_glare.xml", 2)
    answered(bench, 2)


def test_caller_over_tcp_callee_over_udp(bench: Bench) -> None:
    pair(bench, "callee.xml", "caller.xml", 2, "-t", "t1", "-d", "100")
    answered(bench, 2)


def test_b_calls_x_and_reaches_a_masked_both_ways(bench: Bench) -> None:
    pair(bench, "callee_a.xml", "caller_b.xml", 2, "-d", "100", caller_number=B)
    answered(bench, 2, direction="b_to_a")
    assert {(r["caller"], r["callee"], r["x"]) for r in bench.cdrs()} == {(B, A, X)}


def test_100_trying_comes_at_once_before_the_180(bench: Bench) -> None:
    """caller_trying.xml fails the call on a 180 before the 100; the INVITE → 100 time
    (rtd "trying") is read from SIPp's per-call response-time dump."""
    pair(bench, "callee.xml", "caller_trying.xml", 3, "-trace_rtt", "-rtt_freq", "1")
    [dump] = bench.tmp.glob("caller_trying_*_rtt.csv")
    rows = [line.split(";") for line in dump.read_text().splitlines()[1:] if line.strip()]
    trying_ms = [float(row[1]) for row in rows if row[2].strip() == "trying"]
    assert len(trying_ms) == 3, dump.read_text()
    assert max(trying_ms) < 50, trying_ms
    answered(bench, 3)


def test_delayed_offer_invite_and_reinvite_answer_in_the_ack(bench: Bench) -> None:
    pair(bench, "callee_late_offer.xml", "caller_late_offer.xml", 2)
    answered(bench, 2)



def test_reliable_early_media_pracked_on_leg_b_relayed_plain_to_a(bench: Bench) -> None:
    pair(bench, "callee_100rel_early.xml", "caller_early_media.xml", 2)
    answered(bench, 2)


def test_update_in_the_early_dialog_changes_codec_before_the_answer(bench: Bench) -> None:
    pair(bench, "callee_early_update.xml", "caller_early_update.xml", 2)
    answered(bench, 2)


def test_callee_hangs_up_on_a_caller_over_tcp(bench: Bench) -> None:
    """sipmask's BYE reaches A over the connection A opened (its Contact says TCP)."""
    proc = start_callee(bench, "callee_hangup.xml", 2)
    finish(bench, proc, bench.caller("caller_wait_bye.xml", 2, "-t", "t1"))
    answered(bench, 2, release_side="callee")


@pytest.mark.rtpengine
@pytest.mark.parametrize(("callee", "caller"), [
    ("callee_held.xml", "caller_hold.xml"),
    ("callee_hold.xml", "caller_held.xml"),
    ("callee_update.xml", "caller_update.xml"),
    ("callee_late_offer.xml", "caller_late_offer.xml"),
])
def test_reoffers_through_rtpengine(rtpengine_ng: HostPort, serve: Callable[..., ServeProcess],
                                    tmp_path: Path, callee: str, caller: str) -> None:
    """The same re-offers with `media.backend: rtpengine`: each offer and answer, from
    either leg, goes through the real daemon and comes back pointing at it."""
    bench = Bench(serve, tmp_path, "--set", "media.backend=rtpengine",
                  "--set", f"media.rtpengine.ng={rtpengine_ng}")
    pair(bench, callee, caller)
    answered(bench, 1)


def test_sip_i_multipart_crosses_as_relay_sdp_only_and_untyped_reinvite_gets_400(
        bench: Bench) -> None:
    """SIP-I trunks on both sides (SDP + ISUP in multipart/mixed): each leg gets sipmask's
    relay SDP alone and sipmask's Allow; the ISUP, which names the numbers, never crosses.
    A re-INVITE whose SDP has no Content-Type is answered 400 and never reaches B."""
    pair(bench, "callee_sipi.xml", "caller_sipi.xml", 2)
    answered(bench, 2)
