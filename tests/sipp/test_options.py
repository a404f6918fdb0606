"""SIPp asks a real `sipmask serve` OPTIONS over UDP and TCP; every one must get its 200
(with Allow listing OPTIONS and a To tag: the scenario's regexp checks fail the call)."""

from __future__ import annotations

import csv
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.net import LOOPBACK
from tests.support.paths import SIPP_SCENARIOS
from tests.support.serve import ServeProcess

pytestmark = [
    pytest.mark.sipp,
    pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp (sip-tester) not installed"),
]

SCENARIO = SIPP_SCENARIOS / "options.xml"
CALLS = 300


def last_stats(path: Path) -> dict[str, str]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    assert rows, f"no statistics in {path}"
    return rows[-1]


def run_sipp(server: ServeProcess, tmp_path: Path, *extra: str) -> dict[str, str]:
    stats = tmp_path / "stats.csv"
    result = subprocess.run(
        ["sipp", "-sf", str(SCENARIO), "-i", LOOPBACK, "-p", "0", "-m", str(CALLS),
         "-r", "300", "-l", "100", "-nostdin", "-timeout", "20s", "-trace_stat",
         "-stf", str(stats), "-fd", "1", *extra, f"{server.udp[0]}:{server.port}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return last_stats(stats)


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_every_options_gets_200(serve: Callable[..., ServeProcess], tmp_path: Path,
                                transport: str) -> None:
    server = serve()
    row = run_sipp(server, tmp_path, "-t", transport)
    assert int(row["SuccessfulCall(C)"]) == CALLS
    assert int(row["FailedCall(C)"]) == 0
    counters = server.counters()
    assert server.returncode == 0
    assert counters["requests_by_method"]["OPTIONS"] >= CALLS
    assert counters["parse_errors"] == 0 and counters["internal_errors"] == 0
    if transport == "t1":
        assert counters["tcp_accepted"] == 1  # one connection, every answer back on it
