"""Shared fixtures: free loopback ports and a real `sipmask serve` subprocess.

    def test_x(serve):
        server = serve("--set", "sip.ring_timeout_s=5")   # extra overrides, optional
        server.udp            # ("127.0.0.1", port) where it listens for SIP over UDP
        server.tcp            # same port over TCP
        server.stop()         # SIGTERM, returns the exit status
        server.counters()     # the counters it printed on the way out

The server listens on udp and tcp on one free port, with the HTTP API off and the store in
the test's tmp_path; `serve` returns once it answers OPTIONS over UDP.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


def free_port(host: str = LOOPBACK) -> int:
    """A port free for both UDP and TCP on `host` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair found")


def udp_block_free(first: int, size: int, host: str = LOOPBACK) -> bool:
    """Whether the `size` UDP ports from `first` on `host` can all be bound right now."""
    probes: list[socket.socket] = []
    try:
        for port in range(first, first + size):
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probes.append(probe)
            probe.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for probe in probes:
            probe.close()


def options_request(target: tuple[str, int], *, local: tuple[str, int] = (LOOPBACK, 5999),
                    transport: str = "UDP", call_id: str | None = None,
                    branch: str | None = None, rport: bool = True) -> bytes:
    """A well-formed OPTIONS to `target` (RFC 3261 §11). With `rport` (the default) the
    answer comes back to the sending socket whatever `local` says (RFC 3581)."""
    call_id = call_id or uuid.uuid4().hex
    branch = branch or f"z9hG4bK{uuid.uuid4().hex[:16]}"
    via = f"SIP/2.0/{transport} {local[0]}:{local[1]};branch={branch}" + (";rport" if rport else "")
    return (f"OPTIONS sip:{target[0]}:{target[1]} SIP/2.0\r\n"
            f"Via: {via}\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@{local[0]}>;tag=probe1\r\n"
            f"To: <sip:{target[0]}:{target[1]}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def udp_exchange(data: bytes, target: tuple[str, int], timeout: float = 1.0,
                 sock: socket.socket | None = None) -> bytes | None:
    """Send one datagram, return the first answer or None after `timeout`."""
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if own:
            s.bind((LOOPBACK, 0))
        s.settimeout(timeout)
        s.sendto(data, target)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None
    finally:
        if own:
            s.close()


def sipmask_cli(store: Path, *args: str) -> str:
    """`sipmask ARGS --set store.path=STORE`, which must succeed; its stdout."""
    result = subprocess.run([sys.executable, "-m", "sipmask", *args,
                             "--set", f"store.path={store}"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def terminate(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; waits either way."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
                wait: float = 15.0) -> ServeProcess:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    out, err = workdir / "serve.stdout", workdir / "serve.stderr"
    args = [sys.executable, "-m", "sipmask", "serve",
            "--set", f"sip.listen=[udp://{LOOPBACK}:{port},tcp://{LOOPBACK}:{port}]",
            "--set", "api.listen=null",
            "--set", f"store.path={workdir / 'store.lmdb'}",
            *overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SIPMASK_CONFIG", None)
    with out.open("wb") as so, err.open("wb") as se:
        proc = subprocess.Popen(args, stdout=so, stderr=se, cwd=REPO, env=env)
    server = ServeProcess(proc, port, workdir, out, err)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"sipmask serve exited {proc.returncode}:\n{server.stderr()}")
        if udp_exchange(options_request(server.udp), server.udp, timeout=0.2) is not None:
            return server
    server.stop()
    raise AssertionError(f"sipmask serve did not answer OPTIONS:\n{server.stderr()}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Factory: `serve(*overrides, port=None)` starts `sipmask serve`; stopped at teardown."""
    started: list[ServeProcess] = []

    def factory(*overrides: str, port: int | None = None) -> ServeProcess:
        server = start_serve(tmp_path / f"serve{len(started)}", *overrides, port=port)
        started.append(server)
        return server

    yield factory
    for server in started:
        with contextlib.suppress(Exception):
            server.stop()
