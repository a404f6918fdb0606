"""Run a pair of pjsua2 endpoints (tests/support/pjsua_endpoint.py) and read what they saw.

The callee starts first and is ready once it answers OPTIONS on its SIP port; then the
caller runs its call to the end. Each process prints one JSON line (see the endpoint's
docstring); a crash, a timeout or a missing line fails with both endpoints' stderr and
pjsua log tails, so the test output says what went wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import free_port, options_request, udp_exchange
from tests.support.paths import REPO

ENDPOINT = Path(__file__).resolve().parent / "pjsua_endpoint.py"
CALLER_IP, CALLEE_IP = "127.0.0.2", "127.0.0.3"
CALLER_TONE, CALLEE_TONE = 1000.0, 1500.0
TONES = (CALLER_TONE, CALLEE_TONE)


@dataclass
class Seen:
    """One endpoint's JSON line, with its exit status and where its files are."""

    role: str
    returncode: int
    data: dict[str, Any]
    stderr: str
    log: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.data.get("ok"))

    @property
    def recorded(self) -> Path:
        return Path(self.data["recorded"])

    @property
    def rtp_remote(self) -> tuple[str, int]:
        host, _, port = str(self.data["rtp_remote"]).rpartition(":")
        return host, int(port)

    def identity_text(self) -> str:
        """Everything this endpoint learnt of the far party: the dialog's remote URI and
        contact, and every SIP message it received for the call."""
        return "\n".join([str(self.data.get("remote_uri", "")),
                          str(self.data.get("remote_contact", "")),
                          *self.data.get("received", [])])

    def report(self) -> str:
        brief = {k: v for k, v in self.data.items() if k not in ("received", "trace")}
        log = self.log.read_text("utf-8", "replace")[-4000:] if self.log.exists() else ""
        return (f"--- {self.role} exit {self.returncode}: {json.dumps(brief)}\n"
                f"{self.data.get('trace', '')}\nstderr: {self.stderr[-2000:]}\n"
                f"log tail ({self.log}):\n{log}")


@dataclass
class Pair:
    caller: Seen
    callee: Seen
    extra: list[str] = field(default_factory=list)

    def report(self) -> str:
        return "\n".join([self.caller.report(), self.callee.report(), *self.extra])


def parse_line(role: str, returncode: int, stdout: str, stderr: str, log: Path) -> Seen:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    data: dict[str, Any] = json.loads(lines[-1]) if lines else {
        "role": role, "ok": False, "error": f"no JSON line; stdout: {stdout[-2000:]!r}"}
    return Seen(role, returncode, data, stderr, log)


def endpoint_args(role: str, bind: tuple[str, int], number: str, tone: float,
                  record: Path, timeout: float) -> list[str]:
    return [sys.executable, str(ENDPOINT), "--role", role, "--bind", f"{bind[0]}:{bind[1]}",
            "--number", number, "--tone-hz", f"{tone:g}", "--record", str(record),
            "--timeout", f"{timeout:g}"]


def wait_ready(proc: subprocess.Popen[str], bind: tuple[str, int], limit: float) -> None:
    """pjsua answers OPTIONS once its transport and account exist (RFC 3261 §11)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return
        if udp_exchange(options_request(bind), bind, timeout=0.2) is not None:
            return
    raise AssertionError(f"callee on {bind} did not answer OPTIONS within {limit} s")


def endpoint_binds() -> tuple[tuple[str, int], tuple[str, int]]:
    """Free SIP addresses for the caller (127.0.0.2) and the callee (127.0.0.3)."""
    return (CALLER_IP, free_port(CALLER_IP)), (CALLEE_IP, free_port(CALLEE_IP))


def run_pair(workdir: Path, call_uri: str, caller_bind: tuple[str, int],
                callee_bind: tuple[str, int], *, caller_number: str, callee_number: str,
                duration: float = 2.0, timeout: float = 15.0,
                caller_extra: tuple[str, ...] = ()) -> Pair:
    """Start the callee at `callee_bind`, run the caller from `caller_bind` against
    `call_uri` for `duration` seconds of call, return what both saw. `caller_extra`: more
    of the endpoint's options for the caller (`--dtmf 0042`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    callee_wav, caller_wav = workdir / "callee.wav", workdir / "caller.wav"
    callee = subprocess.Popen(
        endpoint_args("callee", callee_bind, callee_number, CALLEE_TONE, callee_wav, timeout),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        wait_ready(callee, callee_bind, limit=10.0)
        caller = subprocess.run(
            [*endpoint_args("caller", caller_bind, caller_number, CALLER_TONE, caller_wav,
                            timeout),
             "--call", call_uri, "--duration", f"{duration:g}", *caller_extra],
            capture_output=True, text=True, cwd=REPO, timeout=timeout + 10)
        caller_done = parse_line("caller", caller.returncode, caller.stdout, caller.stderr,
                                 Path(f"{caller_wav}.log"))
        # A caller that failed will bring no BYE: stop the callee (SIGTERM makes it print
        # what it saw) instead of waiting out its deadline.
        try:
            out, err = callee.communicate(timeout=timeout + 10 if caller_done.ok else 1)
        except subprocess.TimeoutExpired:
            callee.terminate()
            out, err = callee.communicate(timeout=10)
    finally:
        if callee.poll() is None:
            callee.kill()
            callee.communicate()
    return Pair(caller=caller_done,
                callee=parse_line("callee", callee.returncode, out, err,
                                  Path(f"{callee_wav}.log")))
