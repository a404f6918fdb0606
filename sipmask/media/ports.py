"""RTP/RTCP port pairs from `media.ports`. Pure: no sockets, no clock.

RFC 3550 §11: RTP takes an even port and RTCP the next odd one, so the unit handed out is
a pair (rtp, rtp + 1). Pairs cycle through the range as a queue: a freed pair goes to the
back, so the longest-idle pair is handed out next and late packets of an ended call do not
land in a new call that got its ports a moment later (the same reason rtpengine and
RTPproxy walk their ranges instead of reusing the lowest free port).

Binding is the caller's job. A pair another process holds fails to bind; the caller hands
it back with `skip()`, which queues it at the back like a freed pair, and asks again.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from sipmask.config.schema import PortRange
from sipmask.errors import PortsExhausted


@dataclass(frozen=True, slots=True)
class PortPair:
    """An even RTP port and its RTCP port, RTP + 1 (RFC 3550 §11)."""

    rtp: int

    @property
    def rtcp(self) -> int:
        return self.rtp + 1


class PortAllocator:
    """Hands out pairs round-robin over the range; O(1) allocate, free and skip."""

    def __init__(self, ports: PortRange) -> None:
        first_even = ports.first + (ports.first & 1)
        # The last pair must fit whole: its RTCP port (rtp + 1) may not pass `last`.
        self._free: deque[int] = deque(range(first_even, ports.last, 2))
        self._in_use: set[int] = set()
        self.range = ports
        self.capacity = len(self._free)
        self.skipped = 0

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._in_use)

    def allocate(self) -> PortPair:
        """The longest-idle free pair. Raises PortsExhausted when every pair is taken."""
        if not self._free:
            raise PortsExhausted(f"no free RTP/RTCP pair in {self.range} "
                                 f"({self.capacity} pairs, all in use)")
        rtp = self._free.popleft()
        self._in_use.add(rtp)
        return PortPair(rtp)

    def free(self, pair: PortPair) -> None:
        """Return a pair; it goes to the back of the queue (see the module docstring)."""
        if pair.rtp not in self._in_use:
            raise ValueError(f"port pair {pair.rtp}/{pair.rtcp} is not allocated")
        self._in_use.remove(pair.rtp)
        self._free.append(pair.rtp)

    def skip(self, pair: PortPair) -> None:
        """Give back a pair that failed to bind (another process holds it). It is tried
        again only after every other free pair, by which time it may have been released."""
        self.free(pair)
        self.skipped += 1
