"""CallPolicy: the engine's one object for "who may call" (the hardening issue).

The engine asks it at three points of a new INVITE and tells it when calls start and end:

    admit(request, source, trunk)              before routing: overload, then source flood
    admit_attempt(x, caller)                   before the store lookup: caller and X rates
    admit_route(binding, caller, direction)    after routing: blacklists, direction rule,
                                               concurrent calls on X, tenant rate
    call_started(call) / call_ended(call)      the in-progress count per X
    max_duration(binding)                      seconds an answered call may last, or None

Refusals are the typed errors of policy/rules.py. Time for the rate buckets is the injected
clock's monotonic(); the overload flag is read from a LagMonitor (policy/overload.py),
which `start()` runs on the engine's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sipmask.clock import Clock
from sipmask.config.schema import Config, RateConfig
from sipmask.policy import rules
from sipmask.policy.overload import LagMonitor
from sipmask.policy.ratelimit import KeyedLimiter
from sipmask.sip.message import Request
from sipmask.store.rules import MAX_CALL_S

_LIST_CACHE = 4096      # distinct binding blacklists whose prefix sets are kept


class LoadSignal(Protocol):
    @property
    def overloaded(self) -> bool: ...


class CallRef(Protocol):
    """What the counters read of a call (b2bua.call.Call satisfies it)."""

    @property
    def call_id(self) -> str: ...
    @property
    def x(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Figures:
    """For metrics and tests: what the policy holds right now."""

    calls_in_progress: int
    tracked_sources: int
    overloaded: bool
    lag_s: float


class CallPolicy:
    def __init__(self, config: Config, clock: Clock, *, load: LoadSignal | None = None) -> None:
        self.clock = clock
        policy = config.policy
        self.monitor = LagMonitor(policy.overload_lag_ms / 1000.0)
        self.load: LoadSignal = load if load is not None else self.monitor
        off = KeyedLimiter(0, 0)
        self.sources = self.callers = self.xs = self.tenants = off   # set by reconfigure
        self._live: dict[str, str] = {}          # call id -> X, calls counted in progress
        self._lists: dict[tuple[str, ...], rules.Prefixes] = {}
        self._per_x: dict[str, int] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """Take `config`'s policy and tenant blacklists (at start, and on `sipmask reload`).
        The calls in progress stay counted; a rate limit whose numbers did not change keeps
        its buckets, a changed one starts with full buckets."""
        policy = config.policy
        self.retry_after_s = policy.retry_after_s
        self.default_max_concurrent = policy.max_concurrent_per_x
        self.default_max_duration_s = policy.max_duration_s
        self.monitor.estimate.threshold_s = policy.overload_lag_ms / 1000.0

        def limiter(rate: RateConfig, old: KeyedLimiter) -> KeyedLimiter:
            if (old.rate, old.burst, old.max_keys) == (
                    float(rate.rate), float(rate.burst), policy.max_tracked_keys):
                return old
            return KeyedLimiter(rate.rate, rate.burst, max_keys=policy.max_tracked_keys)

        self.sources = limiter(policy.source_flood, self.sources)
        self.callers = limiter(policy.per_caller, self.callers)
        self.xs = limiter(policy.per_x, self.xs)
        self.tenants = limiter(policy.per_tenant, self.tenants)
        self.tenant_blacklists = {name: rules.Prefixes.of(t.blacklist)
                                  for name, t in config.tenants.items()}
        self._lists.clear()

    # -- the loop-lag monitor ---------------------------------------------------------------
    def start(self) -> None:
        """Start measuring loop lag (call from inside the running loop)."""
        self.monitor.start()

    async def stop(self) -> None:
        await self.monitor.stop()

    # -- before routing ---------------------------------------------------------------------
    def admit(self, request: Request, source: tuple[str, int], trunk: str | None,
              now: float | None = None) -> None:
        """Overload first (refusing costs least when the loop is behind), then the per-source
        flood bucket, keyed by address only: a flooder's ports are free to change. `now` is
        monotonic seconds (default: the clock's)."""
        rules.check_overload(self.load.overloaded, self.retry_after_s)
        at = self.clock.monotonic() if now is None else now
        rules.check_flood(self.sources.take(source[0], at), self.retry_after_s)

    def admit_attempt(self, x: str, caller: str, now: float | None = None) -> None:
        """Every call attempt spends a per-caller and a per-X token, before the store is
        asked (issue 12): spent only after a successful lookup, they let one caller probe Xs
        at any rate and sort them by answer (unbound 404, AXB 403, AXN ringing), so every
        attempt pays, bound X or not. The caller's bucket goes first: a caller over its rate
        spends none of X's, so one flooding caller cannot use up the rate of an X that
        others call. `now` is monotonic seconds (default: the clock's)."""
        at = self.clock.monotonic() if now is None else now
        rules.check_rate(self.callers.take(caller, at))
        rules.check_rate(self.xs.take(x, at))

    # -- after routing ----------------------------------------------------------------------
    def admit_route(self, binding: rules.PolicyBinding, caller: str, direction: str,
                    now: float | None = None) -> None:
        """`now` is monotonic seconds (default: the clock's). Rules that take no tokens
        run first, so a refused caller does not spend the tenant's rate; the caller's and
        X's were spent by admit_attempt."""
        tenant_list = self.tenant_blacklists.get(binding.tenant)
        if tenant_list is not None:
            rules.check_blacklist(caller, tenant_list)
        if binding.blacklist:
            rules.check_blacklist(caller, self._binding_list(binding.blacklist))
        rules.check_direction(binding.direction, direction)
        cap = binding.max_concurrent
        rules.check_concurrency(self._per_x.get(binding.x, 0),
                                self.default_max_concurrent if cap is None else cap)
        at = self.clock.monotonic() if now is None else now
        rules.check_rate(self.tenants.take(binding.tenant, at))

    def _binding_list(self, entries: tuple[str, ...]) -> rules.Prefixes:
        """Bindings share few distinct blacklists; keep their prefix sets, bounded."""
        found = self._lists.get(entries)
        if found is None:
            if len(self._lists) >= _LIST_CACHE:
                self._lists.clear()
            found = self._lists[entries] = rules.Prefixes.of(entries)
        return found

    def max_duration(self, binding: object) -> float | None:
        """Seconds an answered call on `binding` may last: the binding's own limit when it
        has one (0 there: none), else policy.max_duration_s (0: none). A stored limit past
        the store's bound (written before there was one) counts as the bound: 10**400 once
        reached float() here and raised OverflowError in the call path."""
        own = getattr(binding, "max_duration_s", None)
        limit = self.default_max_duration_s if own is None else min(own, MAX_CALL_S)
        return float(limit) if limit and limit > 0 else None

    # -- calls in progress ------------------------------------------------------------------
    def call_started(self, call: CallRef) -> None:
        if call.call_id in self._live:
            return
        self._live[call.call_id] = call.x
        self._per_x[call.x] = self._per_x.get(call.x, 0) + 1

    def call_ended(self, call: CallRef) -> None:
        x = self._live.pop(call.call_id, None)
        if x is None:
            return
        left = self._per_x.get(x, 1) - 1
        if left > 0:
            self._per_x[x] = left
        else:
            self._per_x.pop(x, None)

    def in_progress(self, x: str) -> int:
        return self._per_x.get(x, 0)

    def figures(self) -> Figures:
        lag = self.monitor.lag_s if self.load is self.monitor else 0.0
        return Figures(len(self._live), len(self.sources), self.load.overloaded, lag)
