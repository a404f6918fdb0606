"""Issue 14 §3: which binding held X at a moment, on both stores. A binding's record is kept
after unbind or expiry (the history) with who ended it, for history_keep_s
(cdr.retention_days), then swept."""

from __future__ import annotations

import math

import pytest

from sipmask.clock import FakeClock
from sipmask.errors import RefusedError
from sipmask.store import BindingRequest
from sipmask.store.rules import RuleStore
from tests.support.store import A, B, C, D, X


def held(store: RuleStore, at: float) -> list[tuple[str, str | None, float | None,
                                                    str | None, str | None]]:
    return [(h.binding.a, h.created_by, h.ended_at, h.ended_by, h.end_reason)
            for h in store.trace(X, at)]


def test_a_live_binding_is_traced_with_who_made_it(store: RuleStore, clock: FakeClock) -> None:
    t0 = clock.wall()
    made = store.create(mode="axb", tenant="demo", a=A, b=B, x=X, actor="api")
    clock.advance(10)
    [found] = store.trace(X, t0 + 5)
    assert found.binding == made
    assert (found.created_by, found.ended_at, found.ended_by, found.end_reason) == (
        "api", None, None, None)
    assert store.trace(X, t0 - 1) == []                      # before it was made
    assert store.trace("+86 " + X[:3] + " " + X[3:], t0) != []   # X normalised like a call's
    json = found.to_json()
    assert (json["a"], json["b"], json["created_by"], json["ended_at"]) == (A, B, "api", None)


def test_an_unbound_binding_stays_traceable_with_who_ended_it(
        store: RuleStore, clock: FakeClock) -> None:
    t0 = clock.wall()
    first = store.create(mode="axb", tenant="demo", a=A, b=B, x=X, actor="api")
    clock.advance(20)
    store.delete(first.id, actor="cli")
    clock.advance(5)
    second = store.create(mode="axb", tenant="demo", a=C, b=D, x=X, actor="cli")
    clock.advance(5)
    assert held(store, t0 + 10) == [(A, "api", t0 + 20, "cli", "unbind")]
    assert held(store, t0 + 21) == []                         # between the two
    assert held(store, t0 + 26) == [(C, "cli", None, None, None)]
    assert [h.binding for h in store.trace(X, t0 + 26)] == [second]
    [gone] = store.trace(X, t0 + 1)
    assert gone.binding == first and gone.to_json()["ended_at"] is not None


def test_an_expired_binding_is_traced_as_ended_by_expiry(
        store: RuleStore, clock: FakeClock) -> None:
    t0 = clock.wall()
    store.create(mode="axn", tenant="demo", a=A, x=X, ttl=30, actor="cli")
    clock.advance(40)
    # Expired, not yet swept: still found, ended when it expired.
    assert held(store, t0 + 10) == [(A, "cli", t0 + 30, None, "expiry")]
    assert store.sweep(clock.wall()) == 1
    assert held(store, t0 + 10) == [(A, "cli", t0 + 30, None, "expiry")]    # from history
    assert held(store, t0 + 30) == held(store, t0 + 35) == []


def test_overlapping_bindings_on_one_x_are_all_traced(store: RuleStore,
                                                      clock: FakeClock) -> None:
    t0 = clock.wall()
    rows = [(1, BindingRequest("axb", A, B, X, tenant="demo")),
            (2, BindingRequest("axb", C, D, X, tenant="demo"))]
    made = [o.binding for o in store.create_many(rows)]
    clock.advance(1)
    assert [(h.binding, h.created_by) for h in store.trace(X, t0)] == [
        (b, "import") for b in sorted(made, key=lambda b: (b.created_at, b.id))]  # type: ignore[union-attr]


def test_history_is_swept_after_its_keep(store: RuleStore, clock: FakeClock) -> None:
    store.history_keep_s = 100.0
    t0 = clock.wall()
    made = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    clock.advance(10)
    store.delete(made.id)
    clock.advance(50)
    assert store.sweep(clock.wall()) == 0                     # kept 100 s after it ended
    assert len(store.trace(X, t0 + 1)) == 1
    clock.advance(60)
    assert store.sweep(clock.wall()) == 1
    assert store.trace(X, t0 + 1) == []
    assert store.sweep(clock.wall()) == 0
    store.history_keep_s = None                               # 0 days: kept for ever
    again = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    store.delete(again.id)
    clock.advance(10 ** 8)
    assert store.sweep(clock.wall()) == 0


@pytest.mark.parametrize(("x", "at", "field"), [
    ("12345", 1.0, "x"), ("13800000001", 1.0, "x"), ("", 1.0, "x"),
    (X, math.nan, "at"), (X, -1.0, "at"), (X, 1e300, "at")])
def test_bad_input_is_refused_by_field(store: RuleStore, x: str, at: float,
                                       field: str) -> None:
    with pytest.raises(RefusedError) as exc:
        store.trace(x, at)
    assert exc.value.field == field and "13800000001" not in exc.value.message
