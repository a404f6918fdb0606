"""A call in progress goes on through `sipmask reload` (real SIPp legs on both sides)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sipmask.config import loader
from tests.support.paths import REPO
from tests.support.sipp import Bench, finish

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]


def test_a_call_in_progress_is_not_dropped_by_a_reload(
        bench_factory: Callable[..., Bench], tmp_path: Path) -> None:
    data = yaml.safe_load(loader.default_text())
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump(data))
    pid = ("--set", f"sip.pid_file={tmp_path / 'node.pid'}")
    bench = bench_factory("-c", str(config), *pid)
    callee = bench.callee("callee.xml", 1)
    outcome: dict[str, subprocess.CompletedProcess[str]] = {}
    caller = threading.Thread(target=lambda: outcome.setdefault(
        "run", bench.caller("caller.xml", 1, "-d", "3000")))
    caller.start()
    time.sleep(1.5)                               # the call is up, held for 3 s
    data["policy"]["per_x"] = {"rate": 1, "burst": 1}
    data["sip"]["ring_timeout_s"] = 20
    config.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "sipmask", "reload", "-c", str(config), *pid,
                           *bench.overrides[:4]], capture_output=True, text=True, cwd=REPO,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    caller.join(timeout=60)
    finish(bench, callee, outcome["run"])
    log = bench.server.stderr()
    assert "config.reloaded" in log and "policy.per_x.rate" in log, log[-2000:]
    [record] = bench.cdrs()
    assert record["sip_status"] == 200 and record["release_side"] == "caller"
