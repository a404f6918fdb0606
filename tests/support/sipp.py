"""SIPp benches: one real `sipmask serve` with a bound X between a SIPp caller and a SIPp
callee, and the verdict of a call run through it.

The caller (leg A) runs on 127.0.0.2, the callee (leg B, the trunk's outbound) on 127.0.0.3,
sipmask on 127.0.0.1. Every scenario in sipp-scenarios/ carries privacy checks: the callee
fails the call if the caller's number, address, Call-ID, name, UA or media port arrives, the
caller fails it if the callee's come back. SIPp's exit status is the verdict; CDRs are read
back with `sipmask cdr list`. Tests take a bench from the `bench_factory` fixture
(tests/sipp/conftest.py) or build one on the `serve` fixture.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.net import free_port
from tests.support.paths import SIPP_SCENARIOS
from tests.support.serve import ServeProcess, sipmask_cli

CALLER_IP, CALLEE_IP = "127.0.0.2", "127.0.0.3"
A, B, X, STRANGER = "13800000001", "13900000002", "700100000000001", "13700000003"


class Bench:
    """One sipmask with a bound X, a callee port on 127.0.0.3, and SIPp runners."""

    def __init__(self, serve: Callable[..., ServeProcess], tmp_path: Path,
                 *overrides: str, bind: bool = True) -> None:
        self.tmp = tmp_path
        self.store = tmp_path / "calls.lmdb"
        self.callee_port = free_port(CALLEE_IP)
        self.overrides = ("--set", f"store.path={self.store}",
                          "--set", f"trunks.carrier.outbound=udp://{CALLEE_IP}:{self.callee_port}",
                          "--set", "media.ports=41000-41999", *overrides)
        if bind:
            self.cli("bind", "axb", "--a", A, "--b", B, "--x", X, "--ttl", "0")
        self.server = serve(*self.overrides)

    def cli(self, *args: str) -> str:
        return sipmask_cli(self.store, *args)

    def callee(self, scenario: str, calls: int, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["sipp", "-sf", str(SIPP_SCENARIOS / scenario), "-i", CALLEE_IP, "-mi", CALLEE_IP,
             "-mp", "18000", "-p", str(self.callee_port), "-m", str(calls), "-nostdin",
             "-timeout", "30s", "-trace_err", *extra],
            cwd=self.tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def caller(self, scenario: str, calls: int, *extra: str, caller: str = A,
               x: str = X) -> subprocess.CompletedProcess[str]:
        # The privacy regexps name the caller's media port, so it is fixed; when another
        # SIPp on this machine holds it for a moment, wait and run again.
        for _ in range(3):
            result = self._caller(scenario, calls, *extra, caller=caller, x=x)
            if result.returncode == 0 or "Unable to bind" not in result.stdout + result.stderr:
                return result
            time.sleep(1.0)
        return result

    def _caller(self, scenario: str, calls: int, *extra: str, caller: str,
                x: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sipp", f"127.0.0.1:{self.server.port}", "-sf", str(SIPP_SCENARIOS / scenario),
             "-i", CALLER_IP, "-mi", CALLER_IP, "-mp", "16000", "-p", "0",
             "-key", "caller", caller, "-key", "x", x, "-m", str(calls), "-r", "20",
             "-nostdin", "-timeout", "30s", "-cid_str", "callerleg-%u-%p@%s", "-trace_err",
             *extra],
            cwd=self.tmp, capture_output=True, text=True, timeout=60)

    def errors(self) -> str:
        return "\n".join(p.read_text("utf-8", "replace")[-3000:]
                         for p in self.tmp.glob("*_errors.log"))

    def cdrs(self) -> list[dict[str, object]]:
        out = self.cli("cdr", "list", "--tenant", "demo")
        return [json.loads(line) for line in out.splitlines() if line.strip()]


def finish(bench: Bench, callee: subprocess.Popen[str] | None,
           caller: subprocess.CompletedProcess[str]) -> None:
    """Waits for the callee, then fails with both sides' output, SIPp's error logs and
    sipmask's stderr unless both SIPp runs passed."""
    callee_out = ""
    if callee is not None:
        try:
            callee_out, _ = callee.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            callee.kill()
            callee_out, _ = callee.communicate()
    detail = (f"caller:\n{caller.stdout[-1500:]}{caller.stderr[-500:]}\ncallee:\n"
              f"{callee_out[-1500:]}\nerrors:\n{bench.errors()}\nsipmask:\n"
              f"{bench.server.stderr()[-3000:]}")
    assert caller.returncode == 0, detail
    if callee is not None:
        assert callee.returncode == 0, detail
