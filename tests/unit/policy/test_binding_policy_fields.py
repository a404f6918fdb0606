"""A binding's policy rules go in through store.create and come back out of route()."""

from __future__ import annotations

import pytest

from sipmask.config import loader
from sipmask.errors import RefusedError
from sipmask.store.memory import MemoryStore

A, B = "13800000001", "13900000002"
X = "700100000000001"


def store() -> MemoryStore:
    return MemoryStore(tenants=loader.loads(loader.default_text()).tenants)


def test_policy_fields_are_kept_and_normalised() -> None:
    s = store()
    made = s.create(mode="axb", tenant="demo", a=A, b=B, x=X, direction="b_to_a",
                    max_duration_s=60, max_concurrent=2, blacklist=("+86 137", "0086010"))
    routed = s.route(X, A, made.created_at + 1)
    assert routed is not None
    assert (routed.direction, routed.max_duration_s, routed.max_concurrent, routed.blacklist) \
        == ("b_to_a", 60, 2, ("010", "137"))
    assert made.to_json()["blacklist"] == ["010", "137"]


def test_without_policy_fields_a_binding_has_no_rules() -> None:
    made = store().create(mode="axn", tenant="demo", a=A, x=X)
    assert (made.direction, made.max_duration_s, made.max_concurrent, made.blacklist) == \
        ("both", None, None, ())


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"direction": "sideways"}, "direction"),
    ({"max_duration_s": -1}, "max_duration_s"),
    ({"max_concurrent": -2}, "max_concurrent"),
    ({"blacklist": ("13x",)}, "blacklist"),
])
def test_bad_policy_fields_are_refused_by_name(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(RefusedError) as exc:
        store().create(mode="axb", tenant="demo", a=A, b=B, x=X, **kwargs)  # type: ignore[arg-type]
    assert exc.value.field == field


def test_an_axn_binding_has_no_direction_rule() -> None:
    with pytest.raises(RefusedError) as exc:
        store().create(mode="axn", tenant="demo", a=A, x=X, direction="a_to_b")
    assert exc.value.field == "direction"
