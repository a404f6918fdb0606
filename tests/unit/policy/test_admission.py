"""CallPolicy: the order of the checks, the counters, and the config that drives them."""

from __future__ import annotations

import dataclasses

import pytest

from sipmask.clock import FakeClock
from sipmask.config import loader
from sipmask.policy import CallPolicy, rules
from sipmask.sip.message import Request
from sipmask.sip.parser import parse_message
from sipmask.store.base import Binding
from sipmask.store.rules import MAX_CALL_S

A, B, STRANGER = "13800000001", "13900000002", "13700000003"
X = "700100000000001"
SOURCE = ("192.0.2.10", 5060)
_PARSED = parse_message(
    f"INVITE sip:{X}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\n"
    f"From: <sip:{A}@192.0.2.10>;tag=1\r\nTo: <sip:{X}@127.0.0.1>\r\nCall-ID: c1\r\n"
    f"CSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n".encode())
assert isinstance(_PARSED, Request)
INVITE = _PARSED
BINDING = Binding(id="b1", mode="axb", tenant="demo", x=X, a=A, b=B, created_at=0.0,
                  expires_at=None)


@dataclasses.dataclass
class Load:
    overloaded: bool = False


@dataclasses.dataclass
class CallStub:
    call_id: str
    x: str = X


def policy(*overrides: str, load: Load | None = None) -> tuple[CallPolicy, FakeClock]:
    clock = FakeClock()
    config = loader.loads(loader.default_text(), list(overrides))
    return CallPolicy(config, clock, load=load), clock


def test_defaults_admit_a_benchmark_rate_from_one_source_and_caller() -> None:
    p, clock = policy()
    for _ in range(4000):                              # one second at 4000 calls/s: burst
        p.admit(INVITE, SOURCE, "carrier")
        p.admit_attempt(X, A)
        p.admit_route(BINDING, A, "a_to_b")
        clock.advance(0.00025)


def test_source_flood_is_503_with_retry_after_and_per_address() -> None:
    p, clock = policy("policy.source_flood={rate: 10, burst: 2}", "policy.retry_after_s=3")
    p.admit(INVITE, SOURCE, "carrier")
    p.admit(INVITE, ("192.0.2.10", 5099), "carrier")     # another port, the same host
    with pytest.raises(rules.Flood) as exc:
        p.admit(INVITE, SOURCE, "carrier")
    assert (exc.value.status, exc.value.retry_after) == (503, 3)
    p.admit(INVITE, ("192.0.2.11", 5060), "carrier")
    clock.advance(0.1)
    p.admit(INVITE, SOURCE, "carrier")


def test_overload_refuses_before_spending_flood_tokens() -> None:
    load = Load(overloaded=True)
    p, _ = policy("policy.source_flood={rate: 1, burst: 1}", load=load)
    with pytest.raises(rules.Overloaded) as exc:
        p.admit(INVITE, SOURCE, "carrier")
    assert exc.value.retry_after == 5
    load.overloaded = False
    p.admit(INVITE, SOURCE, "carrier")


def test_tenant_and_binding_blacklists() -> None:
    p, _ = policy("tenants.demo.blacklist=['137']")
    with pytest.raises(rules.Blacklisted):
        p.admit_route(BINDING._replace(mode="axn", b=None), STRANGER, "n_to_a")
    listed = BINDING._replace(blacklist=(B,))
    with pytest.raises(rules.Blacklisted):
        p.admit_route(listed, B, "b_to_a")
    p.admit_route(listed, A, "a_to_b")


def test_direction_rule_from_the_binding() -> None:
    p, _ = policy()
    one_way = BINDING._replace(direction="a_to_b")
    p.admit_route(one_way, A, "a_to_b")
    with pytest.raises(rules.DirectionRefused):
        p.admit_route(one_way, B, "b_to_a")


@pytest.mark.parametrize(("limit", "key_changes"), [
    ("per_caller", {"caller": STRANGER}),
    ("per_x", {"x": "700100000000002"}),
])
def test_attempt_rates_are_403_per_key(limit: str, key_changes: dict[str, str]) -> None:
    p, clock = policy(f"policy.{limit}={{rate: 1, burst: 2}}")
    p.admit_attempt(X, B)
    p.admit_attempt(X, B)
    with pytest.raises(rules.RateLimited) as exc:
        p.admit_attempt(X, B)
    assert (exc.value.status, exc.value.cause, exc.value.metric) == (
        403, "rate_limited", "rate_limited")
    p.admit_attempt(key_changes.get("x", X), key_changes.get("caller", B))  # its own bucket
    clock.advance(1.0)
    p.admit_attempt(X, B)


def test_tenant_rate_is_403_after_routing() -> None:
    p, clock = policy("policy.per_tenant={rate: 1, burst: 2}")
    axn = BINDING._replace(mode="axn", b=None)
    p.admit_route(axn, B, "n_to_a")
    p.admit_route(axn, B, "n_to_a")
    with pytest.raises(rules.RateLimited) as exc:
        p.admit_route(axn, B, "n_to_a")
    assert exc.value.status == 403
    p.admit_route(axn._replace(tenant="other"), B, "n_to_a")
    clock.advance(1.0)
    p.admit_route(axn, B, "n_to_a")


def test_one_caller_cannot_sort_xs_by_probing() -> None:
    """Issue 12: one caller probed 17 Xs at 99/s with per_caller at 1/s and learned which
    were unbound, AXB or AXN, because tokens were spent only after a successful lookup.
    Every attempt spends the caller's token before the lookup, so all but the burst are
    refused alike, bound X or not."""
    p, clock = policy("policy.per_caller={rate: 1, burst: 2}")
    admitted = 0
    for i in range(17):
        try:
            p.admit_attempt(f"7001000000000{i:02d}", STRANGER)
            admitted += 1
        except rules.RateLimited:
            pass
        clock.advance(1 / 99)
    assert admitted == 2                        # the burst, then 1/s: none within 0.17 s


def test_attempt_spends_the_callers_token_before_xs() -> None:
    """A caller over its rate does not spend X's tokens: one flooding caller cannot use up
    the rate of an X that others call."""
    p, _ = policy("policy.per_caller={rate: 1, burst: 1}", "policy.per_x={rate: 1, burst: 1}")
    p.admit_attempt(X, STRANGER)
    with pytest.raises(rules.RateLimited):
        p.admit_attempt("700100000000002", STRANGER)     # caller's bucket is empty
    p.admit_attempt("700100000000002", A)                # that X's token is still there


def test_refusal_by_rule_spends_no_tenant_tokens() -> None:
    p, _ = policy("policy.per_tenant={rate: 1, burst: 1}")
    one_way = BINDING._replace(direction="a_to_b")
    for _ in range(5):
        with pytest.raises(rules.DirectionRefused):
            p.admit_route(one_way, B, "b_to_a")
    p.admit_route(one_way, A, "a_to_b")


def test_admit_route_spends_no_attempt_tokens() -> None:
    p, _ = policy("policy.per_caller={rate: 1, burst: 1}", "policy.per_x={rate: 1, burst: 1}")
    for _ in range(5):
        p.admit_route(BINDING, A, "a_to_b")
    p.admit_attempt(X, A)


def test_concurrency_cap_per_x_counts_started_and_ended_calls() -> None:
    p, _ = policy("policy.max_concurrent_per_x=2")
    first, second = CallStub("c1"), CallStub("c2")
    p.call_started(first)
    p.call_started(second)
    p.call_started(second)                            # counted once
    with pytest.raises(rules.TooManyCalls) as exc:
        p.admit_route(BINDING, A, "a_to_b")
    assert exc.value.status == 486
    p.admit_route(BINDING._replace(x="700100000000002"), A, "a_to_b")
    p.call_ended(first)
    p.call_ended(first)                               # ended once
    assert p.in_progress(X) == 1
    p.admit_route(BINDING, A, "a_to_b")
    p.call_ended(second)
    assert p.in_progress(X) == 0 and p.figures().calls_in_progress == 0


def test_binding_cap_wins_over_the_default() -> None:
    p, _ = policy("policy.max_concurrent_per_x=5")
    p.call_started(CallStub("c1"))
    with pytest.raises(rules.TooManyCalls):
        p.admit_route(BINDING._replace(max_concurrent=1), A, "a_to_b")
    p.admit_route(BINDING._replace(max_concurrent=0), A, "a_to_b")   # 0: no cap


def test_max_duration_binding_first_then_config() -> None:
    p, _ = policy()
    assert p.max_duration(BINDING) is None
    assert p.max_duration(BINDING._replace(max_duration_s=90)) == 90.0
    q, _ = policy("policy.max_duration_s=3600")
    assert q.max_duration(BINDING) == 3600.0
    assert q.max_duration(BINDING._replace(max_duration_s=0)) is None


def test_a_stored_duration_too_large_for_a_float_cannot_overflow() -> None:
    """Bindings written before the store bounded max_duration_s may hold any int; the
    longest a call may last is then the store's bound, and nothing raises."""
    p, _ = policy()
    for huge in (10 ** 400, MAX_CALL_S + 1):
        assert p.max_duration(BINDING._replace(max_duration_s=huge)) == float(MAX_CALL_S)
    q, _ = policy(f"policy.max_duration_s={MAX_CALL_S * 10}")   # the loader bounds config
    assert q.max_duration(BINDING) == float(MAX_CALL_S * 10)


def config_with(*overrides: str) -> loader.Config:
    return loader.loads(loader.default_text(), list(overrides))


def test_reconfigure_takes_new_limits_and_keeps_unchanged_buckets() -> None:
    p, _ = policy("policy.per_x={rate: 1, burst: 1}", "policy.per_caller={rate: 1, burst: 1}")
    p.admit_attempt(X, A)
    with pytest.raises(rules.RateLimited):
        p.admit_attempt(X, A)
    # per_x switched off, per_caller unchanged: the caller's spent bucket stays spent.
    p.reconfigure(config_with("policy.per_caller={rate: 1, burst: 1}"))
    with pytest.raises(rules.RateLimited):
        p.admit_attempt(X, A)
    p.admit_attempt(X, B)                         # another caller; X is not limited now
    p.admit_attempt(X, STRANGER)
    p.reconfigure(config_with())                  # both off
    p.admit_attempt(X, A)


def test_reconfigure_takes_new_blacklists_and_keeps_calls_in_progress() -> None:
    p, _ = policy("policy.max_concurrent_per_x=1")
    p.call_started(CallStub("c1"))                # type: ignore[arg-type]
    p.reconfigure(config_with("policy.max_concurrent_per_x=1", "tenants.demo.blacklist=['137']"))
    with pytest.raises(rules.Blacklisted):
        p.admit_route(BINDING._replace(mode="axn", b=None), STRANGER, "n_to_a")
    with pytest.raises(rules.TooManyCalls):
        p.admit_route(BINDING, A, "a_to_b")
