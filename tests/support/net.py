"""Loopback ports and a one-datagram SIP probe: what a test needs before it talks to a real
server over real sockets (only loopback addresses: 127.0.0.x simulates hosts)."""

from __future__ import annotations

import random
import socket
import uuid

LOOPBACK = "127.0.0.1"


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


def free_port_range(count: int, host: str = LOOPBACK) -> tuple[int, int]:
    """First and last of `count` UDP ports on `host` (an even start, as RTP wants) free
    right now, above the SIPp and rtpengine test blocks: media.ports for a real server."""
    rng = random.Random()
    for _ in range(50):
        first = rng.randrange(42000, 60000 - count, 2)
        if udp_block_free(first, count, host):
            return first, first + count - 1
    raise RuntimeError("no free media port range")


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
