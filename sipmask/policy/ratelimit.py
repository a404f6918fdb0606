"""Token buckets, single and keyed, on injected time (pure: no clock is read here).

A bucket holds up to `burst` tokens and refills at `rate` tokens per second; an attempt
takes one token or is refused with the seconds until one is back. `rate == 0` means no
limit, so a configured 0 switches a limit off.

The keyed limiter holds one bucket per key (a source address, a caller, an X, a tenant) in
bounded memory: a bucket that has refilled to `burst` is the same as no bucket, so idle
keys are dropped as time passes, and past `max_keys` the least recently used key goes. An
attacker rotating source addresses therefore costs at most `max_keys` buckets; the price
is that an evicted, partly drained key starts again with a full bucket.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class TokenBucket:
    rate: float                 # tokens per second; 0: unlimited
    burst: float                # the most tokens held (and the first burst allowed)
    tokens: float = -1.0        # current level; negative: start full
    stamp: float = 0.0          # when `tokens` was last brought up to date

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 0:
            raise ValueError("rate and burst must not be negative")
        # A limit with rate but no burst still admits one attempt at a time.
        self.burst = max(self.burst, 1.0) if self.rate else self.burst
        if self.tokens < 0:
            self.tokens = self.burst

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens: 0.0 when admitted, else the seconds until they are there."""
        if self.unlimited:
            return 0.0
        self.refill(now)
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        return (cost - self.tokens) / self.rate

    def full_at(self) -> float:
        """When the bucket will be full again (and may be forgotten)."""
        if self.unlimited:
            return self.stamp
        return self.stamp + (self.burst - self.tokens) / self.rate


class KeyedLimiter:
    """One TokenBucket per key, LRU-bounded to `max_keys`, idle (full) buckets dropped."""

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.evicted = 0          # keys dropped while not yet full (memory bound in action)

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        """0.0 when `key` may go on, else the seconds until its next token."""
        if self.unlimited:
            return 0.0
        self._expire(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self.rate, self.burst, stamp=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
                self.evicted += 1
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def _expire(self, now: float) -> None:
        """Drop least recently used buckets that have refilled: cheap, as only the LRU end
        is looked at and every key leaves at most once per use."""
        while self._buckets:
            key, oldest = next(iter(self._buckets.items()))
            if oldest.full_at() > now:
                return
            del self._buckets[key]
