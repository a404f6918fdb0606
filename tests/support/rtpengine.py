"""The real rtpengine daemon (Debian rtpengine-daemon, userspace mode: `--table=-1`) on
loopback, with its own ng port and RTP port block; tests take it from the `daemon` fixture
(tests/conftest.py) or `rtpengine_ng` (tests/sipp/conftest.py), which start it here."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from sipmask.config.schema import HostPort, MediaConfig, RtpengineConfig
from tests.support.net import LOOPBACK, free_port, udp_block_free
from tests.support.processes import terminate

BINARY = shutil.which("rtpengine")
# Ports one daemon relays on: RTP/RTCP pairs for a few dozen calls.
BLOCK = 100


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], ng: HostPort, log: Path) -> None:
        self.proc = proc
        self.ng = ng
        self.log = log

    def media_config(self, timeout_s: int = 60, latching: str = "strict") -> MediaConfig:
        return MediaConfig(backend="rtpengine", timeout_s=timeout_s,
                           latching=latching,  # type: ignore[arg-type]
                           rtpengine=RtpengineConfig(ng=self.ng, timeout_ms=500))


# The SIPp endpoints' fixed media ports (16000, 16100, 18000 and their RTCP): the privacy
# regexps refuse them in SDP, so rtpengine must never offer one of its own that matches.
SIPP_MEDIA = (range(16000, 16200), range(18000, 18200))


def free_udp_range(size: int = BLOCK) -> int:
    """The first port of `size` consecutive UDP ports free on loopback now, below the
    kernel's ephemeral range so other tests' bind(0) does not land in it, and clear of
    the SIPp media ports."""
    start = 12000 + (os.getpid() * 100) % 6000
    for first in range(start, 19900, size):
        block = range(first, first + size)
        if any(block.start < r.stop and r.start < block.stop for r in SIPP_MEDIA):
            continue
        if udp_block_free(first, size):
            return first
    raise RuntimeError("no free UDP port range for rtpengine")


def free_block_in_media_ports(size: int = BLOCK) -> int:
    """A free block of UDP ports at the top of the SIPp benches' media.ports (41000-41999,
    which the scenarios' m= checks name), away from the embedded relay's low end."""
    for first in range(41900, 41000, -size):
        if udp_block_free(first, size):
            return first
    raise RuntimeError("no free UDP port block in 41000-41999")


def answers_ping(ng: HostPort) -> bool:
    """Whether the daemon answers an ng `ping` with `pong` within 0.2 s."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        sock.sendto(b"probe d7:command4:pinge", (ng.host, ng.port))
        try:
            return sock.recv(1000) == b"probe d6:result4:ponge"
        except OSError:
            time.sleep(0.1)
            return False


@contextmanager
def running_daemon(workdir: Path, first_port: int,
                   extra: Sequence[str] = ()) -> Iterator[Daemon]:
    """rtpengine relaying on [first_port, first_port + BLOCK), its log in `workdir`, once it
    answers ping; stopped when the block ends. Skips the test when rtpengine is absent.
    `extra` are more options (--recording-dir, --dtmf-log-dest, ...)."""
    if BINARY is None:
        pytest.skip("rtpengine binary not found (apt-get install rtpengine-daemon)")
    ng = HostPort(LOOPBACK, free_port())
    log = workdir / "rtpengine.log"
    args = [BINARY, "--config-file=none", "--table=-1", f"--interface={LOOPBACK}",
            f"--listen-ng={ng}", "--foreground", "--log-stderr", "--log-level=6",
            f"--port-min={first_port}", f"--port-max={first_port + BLOCK - 1}",
            "--num-threads=2", "--delete-delay=0", *extra]
    with log.open("wb") as sink:
        proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while not answers_ping(ng):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"rtpengine did not start:\n{log.read_text()}")
        yield Daemon(proc, ng, log)
    finally:
        terminate(proc)
