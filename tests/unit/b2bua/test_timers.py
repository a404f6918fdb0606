"""The call timer table (b2bua/timers.py): deadlines on the caller's clock, fired once, in
order; stopped or moved timers never fire at their old deadline."""

from __future__ import annotations

from sipmask.b2bua.timers import CallTimer, CallTimers


def test_due_fires_in_deadline_order_once() -> None:
    timers = CallTimers()
    timers.start("c1", CallTimer.RING, 60.0)
    timers.start("c2", CallTimer.RING, 30.0)
    timers.start("c1", CallTimer.MAX_DURATION, 90.0)
    assert timers.next_timer() == 30.0
    assert timers.due(29.999) == []
    assert timers.due(60.0) == [("c2", CallTimer.RING), ("c1", CallTimer.RING)]
    assert timers.due(60.0) == []
    assert timers.next_timer() == 90.0 and len(timers) == 1


def test_stopped_and_moved_timers_keep_no_old_deadline() -> None:
    timers = CallTimers()
    timers.start("c1", CallTimer.RING, 10.0)
    timers.start("c1", CallTimer.RING, 20.0)           # moved later
    timers.start("c2", CallTimer.RING, 5.0)
    timers.stop("c2", CallTimer.RING)
    assert timers.next_timer() == 20.0
    assert timers.due(15.0) == []
    assert timers.deadline("c1", CallTimer.RING) == 20.0
    timers.start("c1", CallTimer.MAX_DURATION, 25.0)
    timers.stop_all("c1")
    assert timers.next_timer() is None and timers.due(100.0) == [] and len(timers) == 0
