"""The same masked SIPp calls with `media.backend: rtpengine`: the engine's one code path
drives the real daemon (userspace mode) instead of the embedded relay."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.rtpengine import Daemon, free_block_in_media_ports, running_daemon
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


def test_a_recorded_call_through_rtpengine_leaves_its_file_named_in_the_cdr(
        bench_factory: Callable[..., Bench], tmp_path: Path) -> None:
    # rtpengine writes a pcap into its --recording-dir; sipmask, told that directory
    # (media.rtpengine.recording_dir), turns it into the call's sealed recording.
    pcaps = tmp_path / "rtpengine-recordings"
    pcaps.mkdir(mode=0o700)
    recordings = tmp_path / "recordings"
    # Its own daemon (recording flags), on a block away from the module's `daemon`, whose
    # ports look free until it relays a call.
    with running_daemon(tmp_path, free_block_in_media_ports(), extra=[
            f"--recording-dir={pcaps}", "--recording-method=pcap"]) as daemon:
        bench = bench_factory("--set", "media.backend=rtpengine",
                              "--set", f"media.rtpengine.ng={daemon.ng}",
                              "--set", f"media.rtpengine.recording_dir={pcaps}",
                              "--set", f"recording.dir={recordings}",
                              "--set", "announcements.recording_notice=null", bind=False)
        bench.cli("bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0", "--record")
        finish(bench, bench.callee("callee.xml", 1), bench.caller("caller.xml", 1, "-d", "300"))
        [record] = bench.cdrs()
    name = record["recording"]
    assert isinstance(name, str) and name == str(record["call_id"]).partition("@")[0] + ".wav"
    raw = (recordings / "demo" / name).read_bytes()
    assert raw and b"RIFF" not in raw                 # sealed, as the relay's
    assert list(pcaps.glob("pcaps/*.pcap")) == []     # rtpengine's plain pcap is gone
