"""Who may call: the rules, as pure functions that raise typed refusals (no clock, no I/O).

Each refusal is a SipError that knows its answer (status, Retry-After) and the CDR's
`unconnected_cause` (CONTRACT "Call detail records"); the engine turns it into the final
response and a CDR through `getattr(exc, "cause")`, as for b2bua.refusals.UnknownX/NotAllowed.

    refusal            status                 cause
    Blacklisted        403 Forbidden          blacklist
    DirectionRefused   403 Forbidden          not_allowed
    RateLimited        403 Forbidden          rate_limited   (per caller / X / tenant)
    TooManyCalls       486 Busy Here          rate_limited   (concurrent calls on X)
    Flood              503 + Retry-After      rate_limited   (per source address)
    Overloaded         503 + Retry-After      rate_limited   (event loop behind)

TooManyCalls is 486, not 403: a carrier's switch answers a line that has all the calls it
can carry with Busy Here (RFC 3261 §21.4.24: "the callee's end system was contacted
successfully, but the callee is currently not willing or able to take additional calls"),
and the caller may try again later, which a 403 (§21.4.4: "should not be repeated") denies.
Its cause is rate_limited: the caller is allowed on X, X is only full; the CONTRACT's
causes have no closer word. Overload is rate_limited for the same reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from sipmask.errors import ForbiddenError, OverloadError, SipError

DIRECTIONS = ("both", "a_to_b", "b_to_a")


class PolicyRefusal(SipError):
    """A refusal with its CDR cause and the metrics reason it is counted under."""

    cause = "not_allowed"
    metric = "policy"


class Blacklisted(ForbiddenError, PolicyRefusal):
    cause = "blacklist"
    metric = "blacklist"


class DirectionRefused(ForbiddenError, PolicyRefusal):
    cause = "not_allowed"
    metric = "direction"


class RateLimited(ForbiddenError, PolicyRefusal):
    cause = "rate_limited"
    metric = "rate_limited"


class TooManyCalls(PolicyRefusal):
    status = 486
    default_reason = "Busy Here"
    cause = "rate_limited"
    metric = "concurrency"


class Flood(OverloadError, PolicyRefusal):
    cause = "rate_limited"
    metric = "flood"


class Overloaded(OverloadError, PolicyRefusal):
    cause = "rate_limited"
    metric = "overload"


class PolicyBinding(Protocol):
    """What the rules read of a binding (store.base.Binding satisfies it)."""

    @property
    def x(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def direction(self) -> str: ...
    @property
    def max_concurrent(self) -> int | None: ...
    @property
    def blacklist(self) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class Prefixes:
    """A set of number prefixes, matched against normalised (national) numbers."""

    entries: frozenset[str]
    lengths: tuple[int, ...] = ()

    @classmethod
    def of(cls, entries: Iterable[object]) -> Prefixes:
        kept = frozenset(str(e) for e in entries if str(e))
        return cls(kept, tuple(sorted({len(e) for e in kept})))

    def match(self, number: str) -> bool:
        # One set lookup per distinct entry length (a handful), however long the list.
        entries = self.entries
        return any(number[:n] in entries for n in self.lengths)


def check_blacklist(caller: str, *lists: Prefixes) -> None:
    for prefixes in lists:
        if prefixes.entries and prefixes.match(caller):
            raise Blacklisted("Forbidden")


def check_direction(rule: str, direction: str) -> None:
    """A binding's direction rule: `both`, or the one way an AXB call may go. The AXN way
    (n_to_a) is the only one its binding has, so a rule naming an AXB way does not touch it."""
    if rule == "both" or direction not in ("a_to_b", "b_to_a"):
        return
    if direction != rule:
        raise DirectionRefused("Forbidden")


def check_concurrency(in_progress: int, cap: int | None) -> None:
    """`cap` None or 0: no cap."""
    if cap and in_progress >= cap:
        raise TooManyCalls()


def check_rate(wait_s: float) -> None:
    """`wait_s` from a limiter's take(): 0 admits."""
    if wait_s > 0:
        raise RateLimited("Forbidden")


def check_flood(wait_s: float, retry_after_s: int) -> None:
    if wait_s > 0:
        raise Flood(retry_after=max(retry_after_s, int(wait_s + 0.999)))


def check_overload(overloaded: bool, retry_after_s: int) -> None:
    if overloaded:
        raise Overloaded(retry_after=retry_after_s)
