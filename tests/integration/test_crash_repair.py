"""kill -9 with calls up: nothing acknowledged is lost, and the next start closes the calls.

Calls are placed with SIPp (caller on 127.0.0.2 holds each call for a minute, callee on
127.0.0.3 answers). Once sipmask has journalled them as up, it is SIGKILLed mid-call. The
restarted sipmask writes a CDR for each: end_at at the dead process's last heartbeat,
release_side sipmask. Calls that had already ended keep the CDR they had.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sipmask.cdr.store import CdrLog
from sipmask.config import loader
from sipmask.store import open_store
from tests.support.net import free_port
from tests.support.paths import REPO
from tests.support.serve import ServeProcess

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]

SCENARIOS = REPO / "sipp-scenarios"
A, B, X = "13800000001", "13900000002", "700100000000001"


def cdr_log(store: Path) -> tuple[CdrLog, object]:
    handle = open_store(loader.loads(loader.default_text(), [f"store.path={store}"]))
    return CdrLog(handle), handle


def test_calls_up_at_kill_9_get_their_cdr_on_restart(serve: Callable[..., ServeProcess],
                                                      tmp_path: Path) -> None:
    store = tmp_path / "crash.lmdb"
    callee_port = free_port("127.0.0.3")
    subprocess.run([sys.executable, "-m", "sipmask", "bind", "axb", "--a", A, "--b", B,
                    "--x", X, "--ttl", "0", "--set", f"store.path={store}"],
                   check=True, capture_output=True, cwd=REPO, timeout=60)
    overrides = ("--set", f"store.path={store}",
                 "--set", f"trunks.carrier.outbound=udp://127.0.0.3:{callee_port}",
                 "--set", "media.ports=42000-42999",
                 # The restart listens on another free port: the same node by name.
                 "--set", "sip.node_id=crash-test")
    server = serve(*overrides)
    sipp = [
        subprocess.Popen(["sipp", "-sf", str(SCENARIOS / "callee.xml"), "-i", "127.0.0.3",
                          "-mi", "127.0.0.3", "-mp", "18000", "-p", str(callee_port),
                          "-m", "5", "-nostdin", "-timeout", "90s"],
                         cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    # Two short calls that end before the kill, then three that are still up.
    short = subprocess.run(
        ["sipp", f"127.0.0.1:{server.port}", "-sf", str(SCENARIOS / "caller.xml"),
         "-i", "127.0.0.2", "-mi", "127.0.0.2", "-mp", "16000", "-p", "0", "-key", "caller", A,
         "-key", "x", X, "-m", "2", "-d", "100", "-nostdin", "-timeout", "30s",
         "-cid_str", "callerleg-%u-%p@%s"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert short.returncode == 0, short.stdout[-2000:]
    sipp.append(subprocess.Popen(
        ["sipp", f"127.0.0.1:{server.port}", "-sf", str(SCENARIOS / "caller.xml"),
         "-i", "127.0.0.2", "-mi", "127.0.0.2", "-mp", "16100", "-p", "0", "-key", "caller", A,
         "-key", "x", X, "-m", "3", "-d", "60000", "-nostdin", "-timeout", "90s",
         "-cid_str", "callerleg-%u-%p@%s"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        log, handle = cdr_log(store)
        deadline = time.monotonic() + 20
        while len(log.calls_up()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        up = log.calls_up()
        assert len(up) == 3, server.stderr()[-3000:]
        assert len(log.list()) == 2
        handle.close()  # type: ignore[attr-defined]
        time.sleep(2.5)  # heartbeats (every second) land well after the answers
        server.proc.kill()
        server.proc.wait(10)
        killed_at = time.time()
    finally:
        for proc in sipp:
            proc.kill()
            proc.wait(10)

    restarted = serve(*overrides)
    restarted.stop()
    log, handle = cdr_log(store)
    try:
        records = log.list()
        assert log.calls_up() == []
    finally:
        handle.close()  # type: ignore[attr-defined]
    assert len(records) == 5
    ended = [r for r in records if r.release_side == "caller"]
    repaired = [r for r in records if r.release_side == "sipmask"]
    assert len(ended) == 2 and len(repaired) == 3
    for r in repaired:
        assert r.answer_at is not None and r.end_at is not None
        assert r.answer_at <= r.end_at <= killed_at
        assert killed_at - r.end_at < 3.0      # the last heartbeat, not the restart time
        assert r.duration_s >= 1.0
        assert (r.sip_status, r.caller, r.callee, r.unconnected_cause) == (200, A, B, "none")
