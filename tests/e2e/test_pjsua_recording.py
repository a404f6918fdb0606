"""A recorded call between two real pjsua2 endpoints through a real `sipmask serve`
(issue 15; CONTRACT `bind ... --record`, `recording_notice`, CDR `recording`; README
"Recording").

A (13800000001, on 127.0.0.2) calls X (700100000000001) of an AXB binding made with
`--record`; B (13900000002, on 127.0.0.3) answers. Both hear the packaged recording notice
before they hear each other (the caller as early media, the callee after its answer), then
talk: each plays its own tone for 2 s. The recording is then read back the way an operator
does, `sipmask recording export CDR_ID --out FILE`: one stereo WAV, the caller's tone on the
left, the callee's on the right, on one time line; the file under `recording.dir` is sealed.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from sipmask.store.recording_file import MAGIC
from tests.support.goertzel import goertzel_power, level, segment
from tests.support.media import stereo_channels
from tests.support.net import LOOPBACK, free_port_range
from tests.support.pjsua import (
    CALLEE_TONE,
    CALLER_TONE,
    MEDIA_PORTS,
    endpoint_binds,
    run_pair,
)
from tests.support.serve import ServeProcess, sipmask_cli

pytest.importorskip("pjsua2")
pytestmark = pytest.mark.pjsua

A, B, X = "13800000001", "13900000002", "700100000000001"
RATE = 8000
FRAME = RATE // 50      # 20 ms: one RTP packet of PCMU
# A tone plays at amplitude 0.3 (power ~0.09); a frame reaching a ninth of that has it.
ONSET_POWER = 0.01


def onset(samples: list[float], hz: float) -> float | None:
    """Seconds to the first 20 ms frame carrying `hz`, or None if none does."""
    for start in range(0, len(samples) - FRAME + 1, FRAME):
        if goertzel_power(samples[start:start + FRAME], hz, RATE) >= ONSET_POWER:
            return start / RATE
    return None


def test_a_recorded_call_is_noticed_and_exported_caller_left_callee_right(
        serve: Callable[..., ServeProcess], tmp_path: Path) -> None:
    store, recordings = tmp_path / "e2e.lmdb", tmp_path / "recordings"
    first, last = free_port_range(MEDIA_PORTS)
    caller_bind, callee_bind = endpoint_binds()
    sipmask_cli(store, "bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0", "--record")
    server = serve("--set", f"store.path={store}",
                   "--set", f"trunks.carrier.outbound=udp://{callee_bind[0]}:{callee_bind[1]}",
                   "--set", f"media.address={LOOPBACK}",
                   "--set", f"media.ports={first}-{last}",
                   "--set", f"recording.dir={recordings}")

    # The notice (4.6 s) plays before the 2 s of talk: a longer deadline than a plain call.
    pair = run_pair(tmp_path / "call", f"sip:{X}@{LOOPBACK}:{server.port}",
                    caller_bind, callee_bind, caller_number=A, callee_number=B,
                    duration=2.0, timeout=25.0)
    report = pair.report() + f"\nserve stderr:\n{server.stderr()[-4000:]}"
    assert pair.caller.ok and pair.callee.ok, report
    assert pair.caller.data["last_status"] == 200, report

    # The CDR names the recording (CONTRACT "Call detail records").
    [record] = [json.loads(line) for line in
                sipmask_cli(store, "cdr", "list", "--tenant", "demo").splitlines() if line]
    name = record["recording"]
    assert name == str(record["call_id"]).partition("@")[0] + ".wav", record

    # Both heard the notice first: speech, and nothing of the other party, until the
    # caller's 200 (its recording's `confirmed_at`) and for the callee's first seconds.
    answered = pair.caller.data["confirmed_at"]
    assert answered is not None and answered > 3.0, report
    heard = {"caller": segment(pair.caller.recorded, 0.2, answered - 0.2),
             "callee": segment(pair.callee.recorded, 0.2, 3.0)}
    for role, other_tone in (("caller", CALLEE_TONE), ("callee", CALLER_TONE)):
        assert level(heard[role]) > 0.02, (role, level(heard[role]), report)
        assert goertzel_power(heard[role], other_tone, RATE) < 1e-4, (role, report)
    talk = segment(pair.caller.recorded, answered + 0.3)
    assert goertzel_power(talk, CALLEE_TONE, RATE) > \
        10 * goertzel_power(talk, CALLER_TONE, RATE), report

    # Sealed at rest (README "Recording"): no WAV under recording.dir, only the sealed file.
    raw = recordings / "demo" / name
    assert raw.read_bytes().startswith(MAGIC) and b"RIFF" not in raw.read_bytes()
    assert stat.S_IMODE(raw.stat().st_mode) == 0o600

    out = tmp_path / "export.wav"
    exported = json.loads(sipmask_cli(store, "recording", "export", str(record["call_id"]),
                                      "--out", str(out), "--set", f"recording.dir={recordings}"))
    assert exported["state"] == "complete", exported
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    left, right = stereo_channels(out.read_bytes())
    powers = {side: {hz: goertzel_power(samples, hz, RATE) for hz in (CALLER_TONE, CALLEE_TONE)}
              for side, samples in (("left", left), ("right", right))}
    # About the 2 s of talk, not the notice (nothing is recorded while a prompt plays).
    assert 1.5 <= len(left) / RATE <= 4.0, (len(left) / RATE, powers)
    assert powers["left"][CALLER_TONE] >= 20 * powers["left"][CALLEE_TONE], powers
    assert powers["right"][CALLEE_TONE] >= 20 * powers["right"][CALLER_TONE], powers
    # One time line: both tones start within 100 ms of each other.
    caller_from, callee_from = onset(left, CALLER_TONE), onset(right, CALLEE_TONE)
    assert caller_from is not None and callee_from is not None, powers
    assert abs(caller_from - callee_from) <= 0.1, (caller_from, callee_from, powers)
