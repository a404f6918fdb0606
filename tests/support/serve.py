"""A real `sipmask serve` in a child process, and one-shot `sipmask` admin commands.

    server = start_serve(workdir, "--set", "sip.ring_timeout_s=5")   # overrides, optional
    server.udp            # ("127.0.0.1", port) where it listens for SIP over UDP
    server.tcp            # same port over TCP
    server.stop()         # SIGTERM, returns the exit status
    server.counters()     # the counters it printed on the way out

The server listens on udp and tcp on one free port, with the HTTP API off and the store in
`workdir`; `start_serve` returns once it answers OPTIONS over UDP. Tests usually take the
`serve` fixture (tests/conftest.py), which stops every server it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.net import LOOPBACK, free_port, options_request, udp_exchange
from tests.support.paths import REPO


def sipmask_cli(store: Path, *args: str) -> str:
    """`sipmask ARGS --set store.path=STORE`, which must succeed; its stdout."""
    result = subprocess.run([sys.executable, "-m", "sipmask", *args,
                             "--set", f"store.path={store}"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    stdout_path: Path
    stderr_path: Path
    returncode: int | None = field(default=None)

    @property
    def udp(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    @property
    def tcp(self) -> tuple[str, int]:
        return (LOOPBACK, self.port)

    def stdout(self) -> str:
        return self.stdout_path.read_text("utf-8", "replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status (kills after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        return self.returncode

    def counters(self) -> dict[str, Any]:
        """The counters `sipmask serve` prints when it stops (stops it first)."""
        self.stop()
        for line in self.stdout().splitlines():
            if line.startswith("sipmask stopped: counters "):
                data: dict[str, Any] = json.loads(line.partition("counters ")[2])
                return data
        raise AssertionError(f"no counters line in stdout:\n{self.stdout()}\n{self.stderr()}")


def start_serve(workdir: Path, *overrides: str, port: int | None = None,
                wait: float = 15.0, env: dict[str, str] | None = None) -> ServeProcess:
    """`sipmask serve` with `overrides`, once it answers OPTIONS. `env` adds to (or
    replaces) the child's environment; PYTHONPATH stays the repository's unless it says
    otherwise."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    out, err = workdir / "serve.stdout", workdir / "serve.stderr"
    # TCP before UDP: sipmask opens its listeners in this order (server.SipServer.start),
    # so once OPTIONS over UDP is answered, TCP is listening too.
    args = [sys.executable, "-m", "sipmask", "serve",
            "--set", f"sip.listen=[tcp://{LOOPBACK}:{port},udp://{LOOPBACK}:{port}]",
            "--set", "api.listen=null",
            "--set", f"store.path={workdir / 'store.lmdb'}",
            "--set", f"sip.pid_file={workdir / 'serve.pid'}",
            *overrides]
    child_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    child_env.pop("SIPMASK_CONFIG", None)
    with out.open("wb") as so, err.open("wb") as se:
        proc = subprocess.Popen(args, stdout=so, stderr=se, cwd=REPO, env=child_env)
    server = ServeProcess(proc, port, workdir, out, err)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"sipmask serve exited {proc.returncode}:\n{server.stderr()}")
        if udp_exchange(options_request(server.udp), server.udp, timeout=0.2) is not None:
            return server
    server.stop()
    raise AssertionError(f"sipmask serve did not answer OPTIONS:\n{server.stderr()}")
