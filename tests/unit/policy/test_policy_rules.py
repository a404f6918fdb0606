"""Each rule and the answer its refusal carries (status, Retry-After, CDR cause)."""

from __future__ import annotations

import pytest

from sipmask.config.schema import NumberPrefix
from sipmask.errors import SipError
from sipmask.policy import rules

A, B, STRANGER = "13800000001", "13900000002", "13700000003"


def test_refusals_know_their_answer() -> None:
    cases: list[tuple[SipError, int, str]] = [
        (rules.Blacklisted("Forbidden"), 403, "blacklist"),
        (rules.DirectionRefused("Forbidden"), 403, "not_allowed"),
        (rules.RateLimited("Forbidden"), 403, "rate_limited"),
        (rules.TooManyCalls(), 486, "rate_limited"),
        (rules.Flood(retry_after=5), 503, "rate_limited"),
        (rules.Overloaded(retry_after=5), 503, "rate_limited"),
    ]
    for exc, status, cause in cases:
        assert isinstance(exc, SipError) and isinstance(exc, rules.PolicyRefusal)
        assert (exc.status, exc.cause) == (status, cause)
    assert rules.TooManyCalls().reason == "Busy Here"


def test_blacklist_matches_whole_numbers_and_prefixes() -> None:
    listed = rules.Prefixes.of(["1370000", B])
    with pytest.raises(rules.Blacklisted):
        rules.check_blacklist(STRANGER, listed)
    with pytest.raises(rules.Blacklisted):
        rules.check_blacklist(B, listed)
    rules.check_blacklist(A, listed)
    rules.check_blacklist(A, rules.Prefixes.of([]))


def test_blacklist_checks_every_list() -> None:
    with pytest.raises(rules.Blacklisted):
        rules.check_blacklist(A, rules.Prefixes.of(["139"]), rules.Prefixes.of(["138"]))


def test_config_blacklist_entries_are_normalised() -> None:
    assert str(NumberPrefix.parse("+86 138-0000")) == "1380000"
    assert str(NumberPrefix.parse("0086010")) == "010"
    with pytest.raises(ValueError):
        NumberPrefix.parse("13x")
    assert rules.Prefixes.of([NumberPrefix.parse("+86138")]).match(A)


@pytest.mark.parametrize(("rule", "direction", "refused"), [
    ("both", "a_to_b", False), ("both", "b_to_a", False),
    ("a_to_b", "a_to_b", False), ("a_to_b", "b_to_a", True),
    ("b_to_a", "b_to_a", False), ("b_to_a", "a_to_b", True),
    ("a_to_b", "n_to_a", False),          # AXN has one way; an AXB rule does not touch it
])
def test_direction_rule(rule: str, direction: str, refused: bool) -> None:
    if refused:
        with pytest.raises(rules.DirectionRefused):
            rules.check_direction(rule, direction)
    else:
        rules.check_direction(rule, direction)


def test_concurrency_cap() -> None:
    rules.check_concurrency(1, 2)
    rules.check_concurrency(100, None)
    rules.check_concurrency(100, 0)
    with pytest.raises(rules.TooManyCalls):
        rules.check_concurrency(2, 2)


def test_rate_and_flood_and_overload() -> None:
    rules.check_rate(0.0)
    with pytest.raises(rules.RateLimited) as limited:
        rules.check_rate(0.1)
    assert limited.value.retry_after is None       # policy refusal: 403, no Retry-After
    with pytest.raises(rules.Flood) as flood:
        rules.check_flood(0.01, 5)
    assert flood.value.retry_after == 5
    with pytest.raises(rules.Flood) as long_wait:
        rules.check_flood(12.2, 5)
    assert long_wait.value.retry_after == 13       # never ask back before a token is there
    rules.check_overload(False, 5)
    with pytest.raises(rules.Overloaded) as over:
        rules.check_overload(True, 7)
    assert over.value.retry_after == 7
