"""The loop-lag estimate (pure) and the monitor on a real event loop."""

from __future__ import annotations

import asyncio
import time

from sipmask.policy.overload import LagEstimate, LagMonitor


def test_one_slow_wakeup_does_not_trip_it() -> None:
    estimate = LagEstimate(threshold_s=0.2)
    assert estimate.sample(0.5) is False         # smoothed 0.15
    assert estimate.sample(0.0) is False


def test_sustained_lag_trips_it_and_hysteresis_holds_until_half() -> None:
    estimate = LagEstimate(threshold_s=0.2)
    for _ in range(5):
        estimate.sample(0.5)
    assert estimate.overloaded
    estimate.smoothed_s = 0.15                    # below threshold, above half: still on
    assert estimate.sample(0.15) is True
    for _ in range(20):
        estimate.sample(0.0)
    assert not estimate.overloaded


def test_threshold_zero_switches_it_off() -> None:
    estimate = LagEstimate(threshold_s=0)
    for _ in range(10):
        estimate.sample(5.0)
    assert not estimate.overloaded


def test_monitor_sees_a_blocked_loop_and_recovers() -> None:
    async def main() -> tuple[bool, bool, bool]:
        monitor = LagMonitor(0.05, interval_s=0.01, weight=0.5)
        monitor.start()
        await asyncio.sleep(0.05)
        idle = monitor.overloaded
        for _ in range(4):
            time.sleep(0.12)                      # a callback hogging the loop
            await asyncio.sleep(0)
            await asyncio.sleep(0.011)
        busy = monitor.overloaded
        await asyncio.sleep(0.3)
        after = monitor.overloaded
        await monitor.stop()
        return idle, busy, after

    idle, busy, after = asyncio.run(main())
    assert (idle, busy, after) == (False, True, False)
