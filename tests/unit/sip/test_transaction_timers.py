"""The timer values of RFC 3261 §17 (table 4) and RFC 6026 §8, per transport."""

from __future__ import annotations

import pytest

from sipmask.sip.timers import (
    TRYING_DELAY,
    Timer,
    TimerConfig,
    backoff,
    initial,
    retransmit_offsets,
)

DEFAULT = TimerConfig()


@pytest.mark.parametrize(("timer", "udp", "tcp"), [
    (Timer.A, 0.5, None), (Timer.E, 0.5, None), (Timer.G, 0.5, None),
    (Timer.B, 32.0, 32.0), (Timer.F, 32.0, 32.0), (Timer.H, 32.0, 32.0),
    (Timer.L, 32.0, 32.0), (Timer.M, 32.0, 32.0), (Timer.CANCELLED, 32.0, 32.0),
    (Timer.D, 32.0, 0.0), (Timer.J, 32.0, 0.0),
    (Timer.I, 5.0, 0.0), (Timer.K, 5.0, 0.0),
    (Timer.RETRANSMIT_2XX, 0.5, 0.5), (Timer.TRYING, TRYING_DELAY, TRYING_DELAY),
])
def test_initial_values_per_transport(timer: Timer, udp: float | None,
                                      tcp: float | None) -> None:
    assert initial(timer, DEFAULT, "udp") == udp
    assert initial(timer, DEFAULT, "tcp") == tcp


def test_every_timer_has_a_value() -> None:
    for timer in Timer:
        assert initial(timer, DEFAULT, "udp") is not None


def test_timer_d_is_at_least_32_s_and_covers_the_servers_64_t1() -> None:
    assert initial(Timer.D, TimerConfig(t1=0.1), "udp") == 32.0
    assert initial(Timer.D, TimerConfig(t1=1.0), "udp") == 64.0


def test_backoff_doubles_a_without_cap_and_the_others_to_t2() -> None:
    assert backoff(Timer.A, 8.0, DEFAULT) == 16.0
    for timer in (Timer.E, Timer.G, Timer.RETRANSMIT_2XX):
        assert backoff(timer, 1.0, DEFAULT) == 2.0
        assert backoff(timer, 2.0, DEFAULT) == 4.0
        assert backoff(timer, 4.0, DEFAULT) == 4.0


def test_retransmit_schedules() -> None:
    assert retransmit_offsets(Timer.A, DEFAULT, 32.0) == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert retransmit_offsets(Timer.E, DEFAULT, 20.0) == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5,
                                                          19.5]
    assert retransmit_offsets(Timer.G, TimerConfig(t2=2.0), 8.0) == [0.5, 1.5, 3.5, 5.5, 7.5]


def test_config_from_milliseconds() -> None:
    config = TimerConfig.from_ms(250, 2000, 3000)
    assert (config.t1, config.t2, config.t4, config.timeout) == (0.25, 2.0, 3.0, 16.0)
