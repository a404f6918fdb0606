"""Token-bucket arithmetic and the keyed limiter's memory bound, on hand-moved time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipmask.policy.ratelimit import KeyedLimiter, TokenBucket


def test_bucket_allows_burst_then_refuses_with_the_wait() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, stamp=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)      # one token back after 1/rate


def test_bucket_refills_at_rate_up_to_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, stamp=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.take(0.5) == 0.0                      # 0.5 s at 2/s: one token
    assert bucket.take(0.5) > 0
    assert bucket.take(100.0) == 0.0
    assert bucket.tokens == pytest.approx(2.0)          # capped at burst 3, one taken


def test_a_refused_attempt_takes_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, stamp=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.2) > 0
    assert bucket.take(1.0) == 0.0                      # the refusal at 0.2 cost no token


def test_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(rate=0, burst=0)
    assert all(bucket.take(0.0) == 0.0 for _ in range(10_000))


def test_burst_zero_with_a_rate_admits_one_at_a_time() -> None:
    bucket = TokenBucket(rate=10.0, burst=0, stamp=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) > 0


def test_time_going_back_does_not_mint_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, stamp=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) > 0
    assert bucket.take(10.5) > 0


@given(rate=st.floats(0.1, 1000), burst=st.integers(1, 1000),
       steps=st.lists(st.floats(0, 5), min_size=1, max_size=200))
def test_admitted_never_exceed_burst_plus_rate_times_elapsed(
        rate: float, burst: int, steps: list[float]) -> None:
    bucket = TokenBucket(rate=rate, burst=burst, stamp=0.0)
    now, admitted = 0.0, 0
    for step in steps:
        now += step
        admitted += bucket.take(now) == 0.0
    assert admitted <= burst + rate * now + 1e-6


def test_keyed_limiter_keeps_keys_apart() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=1)
    assert limiter.take("192.0.2.1", 0.0) == 0.0
    assert limiter.take("192.0.2.1", 0.0) > 0
    assert limiter.take("192.0.2.2", 0.0) == 0.0


def test_rotating_keys_cannot_grow_memory_past_max_keys() -> None:
    limiter = KeyedLimiter(rate=1.0, burst=5, max_keys=1000)
    for i in range(50_000):
        limiter.take(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 0.0)
    assert len(limiter) == 1000
    assert limiter.evicted == 49_000


def test_idle_keys_are_forgotten_once_refilled() -> None:
    limiter = KeyedLimiter(rate=10.0, burst=10)
    for i in range(100):
        limiter.take(f"k{i}", 0.0)
    assert len(limiter) == 100
    limiter.take("late", 0.2)          # 1 token spent 0.2 s ago at 10/s: every bucket full
    assert len(limiter) == 1
    assert limiter.evicted == 0


def test_unlimited_limiter_holds_no_keys() -> None:
    limiter = KeyedLimiter(rate=0, burst=0)
    for i in range(100):
        assert limiter.take(str(i), 0.0) == 0.0
    assert len(limiter) == 0
