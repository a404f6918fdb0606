"""AXYB and AXE bindings through a real `sipmask serve`, SIPp on both sides (the bench of
tests/support/sipp.py): the number each party dials, the number the other side sees, and
the CDR's direction (CONTRACT "Words")."""

from __future__ import annotations

import shutil
import urllib.request
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.sipp import STRANGER, A, B, Bench, X, finish

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]

Y = "700100000000002"


def test_axyb_a_dials_x_and_b_sees_y_then_b_dials_y_and_a_sees_x(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory(bind=False)
    bench.cli("bind", "axyb", "--a", A, "--b", B, "--x", X, "--y", Y, "--ttl", "0")
    # A -> X: callee_y.xml fails unless From and Contact carry Y and X appears nowhere.
    callee = bench.callee("callee_y.xml", 2)
    finish(bench, callee, bench.caller("caller.xml", 2, "-d", "200"))
    # B -> Y: callee_a.xml fails unless the Request-URI is A and From carries X.
    callee = bench.callee("callee_a.xml", 2)
    finish(bench, callee, bench.caller("caller_b.xml", 2, "-d", "200", caller=B, x=Y))
    rows = sorted((r["x"], r["caller"], r["callee"], r["direction"], r["sip_status"])
                  for r in bench.cdrs())
    assert rows == [(X, A, B, "a_to_b", 200)] * 2 + [(Y, B, A, "b_to_a", 200)] * 2


def test_axe_x_followed_by_the_extension_reaches_a(
        bench_factory: Callable[..., Bench]) -> None:
    bench = bench_factory(bind=False)
    bench.cli("bind", "axe", "--a", A, "--x", X, "--ext", "0042", "--ttl", "0")
    # caller_b.xml fails if A's number comes back; callee_a.xml unless From carries X.
    callee = bench.callee("callee_a.xml", 1)
    finish(bench, callee, bench.caller("caller_b.xml", 1, "-d", "200", caller=STRANGER,
                                       x=X + "0042"))
    finish(bench, None, bench.caller("caller_expect_404.xml", 1, caller=STRANGER,
                                     x=X + "0043"))
    rows = [(r["x"], r["callee"], r["direction"], r["sip_status"]) for r in bench.cdrs()]
    assert sorted(rows, key=str) == [(X, A, "n_to_a", 200), (X, None, None, 404)]


def test_a_recorded_binding_leaves_its_file_named_in_the_cdr(
        bench_factory: Callable[..., Bench], tmp_path: Path) -> None:
    api = free_port()
    bench = bench_factory("--set", f"recording.dir={tmp_path / 'recordings'}",
                          "--set", f"api.listen=127.0.0.1:{api}", bind=False)
    bench.cli("bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0", "--record")
    finish(bench, bench.callee("callee.xml", 1), bench.caller("caller.xml", 1, "-d", "300"))
    [record] = bench.cdrs()
    name = record["recording"]
    assert isinstance(name, str) and name == str(record["call_id"]).partition("@")[0] + ".wav"
    # Sealed at rest (README "Recording"): the file on disk is no WAV; the export is one.
    raw = (tmp_path / "recordings" / "demo" / name).read_bytes()
    assert b"RIFF" not in raw and b"WAVE" not in raw
    out = tmp_path / "export.wav"
    bench.cli("recording", "export", str(record["call_id"]), "--out", str(out),
              "--set", f"recording.dir={tmp_path / 'recordings'}")
    with wave.open(str(out), "rb") as exported:
        assert (exported.getnchannels(), exported.getframerate()) == (2, 8000)
        assert exported.getnframes() >= 0.2 * 8000       # the call's 300 ms, roughly
    # Counted in /metrics (README "Recording"): started once, not failed.
    text = urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=5).read()
    assert b"\nsipmask_recordings_started_total 1.0\n" in text
    assert b"\nsipmask_recordings_failed_total 0.0\n" in text
