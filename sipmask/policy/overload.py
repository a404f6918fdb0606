"""Overload: is the event loop falling behind? Measured, not guessed.

A task sleeps `interval_s` again and again and notes how late each wake-up is: that lateness
is exactly how long ready work (datagrams, timers, call tasks) waits for the loop. The lag is
smoothed (an exponentially weighted mean) so one slow callback does not refuse calls, and
the state has hysteresis: overloaded above the threshold, back to normal only below half of
it, so the answer does not flap at the boundary. `LagEstimate` is the pure part (tests feed
it samples); `LagMonitor` is the asyncio shell.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass(slots=True)
class LagEstimate:
    threshold_s: float
    weight: float = 0.3          # of the newest sample in the mean
    smoothed_s: float = 0.0
    overloaded: bool = False

    def sample(self, lag_s: float) -> bool:
        """Take one measured lag; returns whether the loop now counts as overloaded."""
        lag_s = max(lag_s, 0.0)
        self.smoothed_s += self.weight * (lag_s - self.smoothed_s)
        if self.threshold_s <= 0:
            self.overloaded = False          # threshold 0: overload refusal switched off
        elif self.smoothed_s > self.threshold_s:
            self.overloaded = True
        elif self.smoothed_s < self.threshold_s / 2:
            self.overloaded = False
        return self.overloaded


class LagMonitor:
    """Runs on the loop it measures: `start()` from inside it, `stop()` when done."""

    def __init__(self, threshold_s: float, *, interval_s: float = 0.05,
                 weight: float = 0.3) -> None:
        self.interval_s = interval_s
        self.estimate = LagEstimate(threshold_s, weight)
        self._task: asyncio.Task[None] | None = None

    @property
    def overloaded(self) -> bool:
        return self.estimate.overloaded

    @property
    def lag_s(self) -> float:
        return self.estimate.smoothed_s

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            self.estimate.sample(loop.time() - started - self.interval_s)
