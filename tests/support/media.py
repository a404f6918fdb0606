"""What the media tests share: a UDP peer on loopback, and a runner per event loop kind that
closes what a test opened even when the test fails.

Closing matters beyond tidiness: the next test needs the same ports, and uvloop can hang at
exit over transports left open.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import wave
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar, cast

import uvloop

from sipmask.config.schema import PortRange
from sipmask.store.crypto import Keyring
from sipmask.store.recording_file import State, open_sealed

Address = tuple[str, int]
Test = Callable[[], Coroutine[Any, Any, None]]
Runner = Callable[[Test], None]

# The `params` of each module's `run` fixture: every test runs under both loops.
LOOP_KINDS = ("asyncio", "uvloop")


def port_range(pairs: int, *, first: int, step: int, spread: int) -> PortRange:
    """`pairs` RTP/RTCP port pairs from an even port in [first, first + spread), picked by
    pid (`step` apart) so parallel runs of the suite differ. Each module passes a `first`
    and `spread` of its own, below the kernel's ephemeral ports."""
    base = first + (os.getpid() * step) % spread
    base -= base % 2
    return PortRange(base, base + 2 * pairs - 1)


class Closable(Protocol):
    def close(self) -> object:
        """None, or an awaitable to await (Relay.close, EmbeddedBackend.close)."""


Opened = TypeVar("Opened", bound=Closable)

# What the running test opened, closed by its runner (last opened, first closed).
_OPENED: list[Closable] = []


def close_after(thing: Opened) -> Opened:
    """Registers `thing` (sync or async close) to be closed once the running test ends."""
    _OPENED.append(thing)
    return thing


async def _close_opened() -> None:
    """Closes everything registered; one close failing does not keep the others open, and
    the first failure is raised once all are closed."""
    failure: Exception | None = None
    while _OPENED:
        try:
            closing = _OPENED.pop().close()
            if inspect.isawaitable(closing):
                await closing
        except Exception as error:
            failure = failure or error
    if failure is not None:
        raise failure


async def _guarded(test: Test) -> None:
    try:
        await test()
    finally:
        await _close_opened()


@contextmanager
def loop_runner(kind: str) -> Iterator[Runner]:
    """A runner for `kind` (one of LOOP_KINDS) that runs a test coroutine to its end, then
    closes what close_after registered. Each module's `run` fixture wraps this."""
    factory = uvloop.new_event_loop if kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        yield lambda test: runner.run(_guarded(test))


class UdpPeer(asyncio.DatagramProtocol):
    """A fake phone (or a stranger): one UDP socket on a loopback address, and a queue of
    what it received and from where."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> Self:
        """A peer bound to an ephemeral port on `host`, closed after the test."""
        peer = cls()
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: peer, local_addr=(host, 0))
        return close_after(peer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: CPython 3.11's selector transport does not subclass it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.received.put_nowait((data, addr))

    @property
    def address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    @property
    def port(self) -> int:
        return self.address[1]

    def send(self, data: bytes, to: Address) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    async def recv(self, timeout: float = 1.0) -> bytes:
        """The next datagram's payload; TimeoutError if none comes within `timeout`."""
        return (await self.recv_from(timeout))[0]

    async def recv_from(self, timeout: float = 1.0) -> tuple[bytes, Address]:
        """The next datagram's payload and the address it came from."""
        return await asyncio.wait_for(self.received.get(), timeout)

    async def nothing(self, wait: float = 0.15) -> bool:
        """True when, after `wait`, no datagram is waiting unread."""
        await asyncio.sleep(wait)
        return self.received.empty()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def sealed_stereo(path: Path, keys: Keyring, tenant: str = "demo"
                  ) -> tuple[list[float], list[float]]:
    """A complete sealed recording (store/recording_file.py) as its two channels, caller
    (left) and callee (right), in -1..1; the WAV inside is 8 kHz 16-bit stereo."""
    opened = open_sealed(os.open(path, os.O_RDONLY), keys, tenant, path.name)
    try:
        assert opened.state is State.COMPLETE
        data = opened.stream.read()
    finally:
        opened.stream.close()
    with wave.open(io.BytesIO(data), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        values = memoryview(wav.readframes(wav.getnframes())).cast("h")
    return [v / 32768 for v in values[0::2]], [v / 32768 for v in values[1::2]]
