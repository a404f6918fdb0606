"""The pjsua2 harness on a direct call, A (127.0.0.2) → B (127.0.0.3), no sipmask between.

This proves the harness itself: real endpoints set a call up, each hears the other's tone and
not its own, and the privacy check used on masked calls (tests/e2e/test_pjsua_sipmask.py)
does find the far party's number and address when nothing masks them.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support.goertzel import dominant_tone, rms, tone_powers
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.pjsua import (
    CALLEE_IP,
    CALLEE_TONE,
    CALLER_IP,
    CALLER_TONE,
    TONES,
    endpoint_args,
    endpoint_binds,
    parse_line,
    run_pair,
)

pytest.importorskip("pjsua2")
pytestmark = pytest.mark.pjsua

A, B = "13800000001", "13900000002"


def test_direct_call_each_side_hears_the_other(tmp_path: Path) -> None:
    caller_bind, callee_bind = endpoint_binds()
    pair = run_pair(tmp_path, f"sip:{B}@{callee_bind[0]}:{callee_bind[1]}",
                       caller_bind, callee_bind, caller_number=A, callee_number=B)
    assert pair.caller.ok and pair.callee.ok, pair.report()
    assert pair.caller.data["last_status"] == 200, pair.report()
    assert pair.callee.data["states"][-1] == "DISCONNECTED", pair.report()

    # The caller records the callee's tone, the callee the caller's: each strongly dominant
    # (dominant_tone demands 10× the other candidate) and not silence.
    assert dominant_tone(pair.caller.recorded, TONES) == CALLEE_TONE, \
        tone_powers(pair.caller.recorded, TONES)
    assert dominant_tone(pair.callee.recorded, TONES) == CALLER_TONE, \
        tone_powers(pair.callee.recorded, TONES)
    assert rms(pair.caller.recorded) > 0.05 and rms(pair.callee.recorded) > 0.05
    # Nobody hears themselves: the check can tell one tone from the other.
    assert dominant_tone(pair.caller.recorded, TONES) != CALLER_TONE
    assert dominant_tone(pair.callee.recorded, TONES) != CALLEE_TONE

    # Direct, RTP flows between the two endpoints' own addresses.
    assert pair.caller.rtp_remote[0] == CALLEE_IP, pair.report()
    assert pair.callee.rtp_remote[0] == CALLER_IP, pair.report()
    assert pair.caller.data["rtp_remote"] == pair.callee.data["rtp_local"]
    assert pair.callee.data["rtp_remote"] == pair.caller.data["rtp_local"]


def test_direct_call_exposes_what_sipmask_must_hide(tmp_path: Path) -> None:
    """The privacy assertions of the masked test fire on an unmasked call: each side's
    identity text carries the other's number and address."""
    caller_bind, callee_bind = endpoint_binds()
    pair = run_pair(tmp_path, f"sip:{B}@{callee_bind[0]}:{callee_bind[1]}",
                       caller_bind, callee_bind, caller_number=A, callee_number=B,
                       duration=0.5)
    assert pair.caller.ok and pair.callee.ok, pair.report()
    callee_saw, caller_saw = pair.callee.identity_text(), pair.caller.identity_text()
    assert A in pair.callee.data["remote_uri"] and CALLER_IP in callee_saw
    assert B in pair.caller.data["remote_uri"] and CALLEE_IP in caller_saw
    # The received messages are really there (INVITE at the callee, responses at the caller).
    assert any(m.startswith("INVITE ") for m in pair.callee.data["received"])
    assert any(m.startswith("SIP/2.0 200") for m in pair.caller.data["received"])


def test_endpoint_that_gets_no_answer_exits_with_a_json_error(tmp_path: Path) -> None:
    """Timeouts everywhere: a caller whose INVITE goes nowhere stops at its deadline with
    exit status 1 and one JSON line saying what it waited for."""
    caller_bind = (CALLER_IP, free_port(CALLER_IP))
    nobody = free_port(CALLEE_IP)
    started = time.monotonic()
    result = subprocess.run(
        [*endpoint_args("caller", caller_bind, A, CALLER_TONE, tmp_path / "a.wav", timeout=2),
         "--call", f"sip:{B}@{CALLEE_IP}:{nobody}"],
        capture_output=True, text=True, cwd=REPO, timeout=20)
    seen = parse_line("caller", result.returncode, result.stdout, result.stderr,
                      tmp_path / "a.wav.log")
    assert result.returncode == 1 and not seen.ok, seen.report()
    assert "timed out waiting for the call to be answered" in seen.data["error"]
    assert seen.data["states"] == ["CALLING"]
    assert time.monotonic() - started < 10
