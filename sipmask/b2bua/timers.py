"""The calls' own timers as data, on the injected clock (DESIGN rule 2).

aioquic's shape: the owner asks `next_timer()` for the earliest deadline, its shell keeps
one loop timer armed for it and calls `due(now)` when it fires. Times are the caller's
monotonic seconds; nothing here reads a clock. A heap with lazy deletion: stopping or
moving a timer leaves its old entry, which `due` and `next_timer` skip (one dict lookup),
so a call that ends costs no heap search.
"""

from __future__ import annotations

import heapq
import itertools
from enum import Enum


class CallTimer(Enum):
    __hash__ = object.__hash__

    RING = "ring"                  # sip.ring_timeout_s: leg B not answered (CANCEL, 408)
    MAX_DURATION = "max_duration"  # the binding's talk-time limit, from the answer
    FAILOVER = "failover"          # trunks.*.failover_timeout_ms: leg B's INVITE unanswered
    # The AXE extension prompt (b2bua/announcing.py), keyed by the attempt's call id:
    DIGITS = "digits"              # the next key is late: what was keyed is complete
    PROMPTING = "prompting"        # the whole prompting is over its time limit (404)


_Key = tuple[str, CallTimer]
# Iterating the Enum class runs a Python generator (EnumType.__iter__): once per call end
# was six Python calls; the tuple is iterated in C.
_EVERY_TIMER = tuple(CallTimer)


class CallTimers:
    """Deadlines per (call id, timer)."""

    def __init__(self) -> None:
        self._deadlines: dict[_Key, tuple[float, int]] = {}
        self._heap: list[tuple[float, int, _Key]] = []
        self._seq = itertools.count()
        self.starts = 0          # timers started so far: a shell re-arms only after one

    def __len__(self) -> int:
        return len(self._deadlines)

    def start(self, call_id: str, timer: CallTimer, at: float) -> None:
        """Arm (or move) `timer` of `call_id` to fire at `at`."""
        self.starts += 1
        seq = next(self._seq)
        key = (call_id, timer)
        self._deadlines[key] = (at, seq)
        heapq.heappush(self._heap, (at, seq, key))

    def stop(self, call_id: str, timer: CallTimer) -> None:
        self._deadlines.pop((call_id, timer), None)

    def stop_all(self, call_id: str) -> None:
        deadlines = self._deadlines
        for timer in _EVERY_TIMER:
            deadlines.pop((call_id, timer), None)

    def deadline(self, call_id: str, timer: CallTimer) -> float | None:
        found = self._deadlines.get((call_id, timer))
        return None if found is None else found[0]

    def next_timer(self) -> float | None:
        """The earliest live deadline (stale heap entries are dropped on the way)."""
        heap, live = self._heap, self._deadlines
        while heap:
            at, seq, key = heap[0]
            if live.get(key) == (at, seq):
                return at
            heapq.heappop(heap)
        return None

    def due(self, now: float) -> list[_Key]:
        """Every timer whose deadline is `now` or earlier, in deadline order; each is
        stopped as it is returned (a timer fires once)."""
        fired: list[_Key] = []
        heap, live = self._heap, self._deadlines
        while heap and heap[0][0] <= now:
            at, seq, key = heapq.heappop(heap)
            if live.get(key) == (at, seq):
                del live[key]
                fired.append(key)
        return fired
