"""AXE and AXYB (issue 15 §3) and recorded bindings, against every store (conftest).

The call path is `store.route(number, caller, now, ext=None)` then `base.target(...)`:
these tests drive both, as the engine does."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sipmask.clock import FakeClock
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.errors import ConflictError, PoolExhausted, RefusedError
from sipmask.store import codec
from sipmask.store.base import Binding, BindingRequest, Refusal, Target, target
from sipmask.store.rules import RuleStore
from tests.support.store import TENANTS, A, B, C, D, X

E_CALLER = "13500000005"          # a stranger who keys an extension
X2 = "700100000000002"
Y = "700100000000009"
TINY = "700300000000000"
MORE_TENANTS = {
    **TENANTS,
    "short": TenantConfig("short-token", (NumberRange.parse("700400000000000-700400000000001"),),
                          ext_digits=1),
    "tiny": TenantConfig("tiny-token", (NumberRange.parse(TINY),)),
}


def refused(exc: pytest.ExceptionInfo[Any], field: str) -> str:
    error: RefusedError = exc.value
    assert error.field == field, error
    return error.message


def call(store: RuleStore, dialled: str, caller: str, now: float,
         ext: str | None = None) -> Target | Refusal | None:
    """What the engine does with an INVITE: route, then target (None: 404)."""
    found = store.route(dialled, caller, now, ext)
    return None if found is None else target(found, dialled, caller, ext)


# -- AXE --------------------------------------------------------------------------------------
def test_axe_bindings_share_an_x_told_apart_by_extension(store: RuleStore,
                                                         clock: FakeClock) -> None:
    one = store.create(mode="axe", tenant="demo", a=A, b=B, x=X, ext="0123")
    two = store.create(mode="axe", tenant="demo", a=C, x=X)
    assert (one.ext, one.to_json()["ext"], one.b) == ("0123", "0123", B)
    assert two.ext is not None and len(two.ext) == 4 and two.ext.isdigit()
    assert two.b is None and "record" not in two.to_json()
    now = clock.wall()
    # Anyone keying E reaches that binding's A (n_to_a); a wrong extension finds nothing.
    assert call(store, X, E_CALLER, now, "0123") == Target(A, X, "n_to_a")
    assert call(store, X, E_CALLER, now, two.ext) == Target(C, X, "n_to_a")
    assert call(store, X, B, now, two.ext) == Target(C, X, "n_to_a")
    wrong = "9999" if two.ext != "9999" else "9998"
    assert store.route(X, E_CALLER, now, wrong) is None
    # A calling X without an extension reaches B; a stranger is asked for the extension.
    assert call(store, X, A, now) == Target(B, X, "a_to_b")
    assert call(store, X, E_CALLER, now) is Refusal.ASK_EXT
    assert call(store, X, C, now) is Refusal.ASK_EXT          # C's binding has no B
    # A keying its own extension would call itself.
    assert call(store, X, A, now, "0123") is Refusal.FORBIDDEN
    assert store.get(one.id) == one and store.get(two.id) == two
    assert {b.id for b in store.list(x=X)} == {one.id, two.id}


@pytest.mark.parametrize("ext", ["12", "12345", "12a4", " ", "١٢٣٤"])
def test_an_extension_has_the_tenants_digits(store: RuleStore, ext: str) -> None:
    with pytest.raises(RefusedError) as exc:
        store.create(mode="axe", tenant="demo", a=A, x=X, ext=ext)
    assert "must be 4 digits (tenants.demo.ext_digits)" in refused(exc, "ext") or \
        ext.strip() == ""
    assert store.list() == []


def test_extension_unique_per_x_and_a_once_per_x(store: RuleStore) -> None:
    store.create(mode="axe", tenant="demo", a=A, b=B, x=X, ext="0001")
    with pytest.raises(ConflictError) as exc:
        store.create(mode="axe", tenant="demo", a=C, x=X, ext="0001")
    assert "already bound on this X" in refused(exc, "ext")
    with pytest.raises(ConflictError) as exc2:
        store.create(mode="axe", tenant="demo", a=A, x=X, ext="0002")
    assert "already bound on this X" in refused(exc2, "a")
    # The same extension on another X is another binding.
    assert store.create(mode="axe", tenant="demo", a=C, x=X2, ext="0001").ext == "0001"


def test_an_axe_x_takes_no_other_kind(store: RuleStore) -> None:
    store.create(mode="axe", tenant="demo", a=A, x=X)
    with pytest.raises(ConflictError) as exc:
        store.create(mode="axb", tenant="demo", a=C, b=D, x=X)
    assert "carries AXE bindings" in refused(exc, "x")
    with pytest.raises(ConflictError) as exc2:
        store.create(mode="axn", tenant="demo", a=C, x=X)
    assert "AXN binding needs an X with no other" in refused(exc2, "x")
    store.create(mode="axb", tenant="demo", a=C, b=D, x=X2)
    with pytest.raises(ConflictError) as exc3:
        store.create(mode="axe", tenant="demo", a=A, x=X2)
    assert "carries AXB/AXYB pairs" in refused(exc3, "x")
    # Without --x, an X that fits is allocated.
    made = store.create(mode="axe", tenant="demo", a=C)
    assert made.x not in (X, X2)


def test_extensions_are_drawn_at_random_until_none_is_left(store: RuleStore,
                                                          clock: FakeClock) -> None:
    store.sync_tenants(MORE_TENANTS)
    x = "700400000000000"
    made = [store.create(mode="axe", tenant="short", a=f"1350000000{i}", x=x, ttl=10 + i)
            for i in range(10)]
    exts = [b.ext for b in made]
    assert sorted(exts) == [str(i) for i in range(10)]      # every one, once
    assert exts != sorted(exts)                              # not handed out in order
    with pytest.raises(PoolExhausted) as exc:
        store.create(mode="axe", tenant="short", a=C, x=x)
    assert "all 10 extensions of 1 digits on this X are taken" in refused(exc, "ext")
    # The first to expire frees its extension at once (before any sweep).
    clock.advance(10.5)
    again = store.create(mode="axe", tenant="short", a=C, x=x)
    assert again.ext == made[0].ext
    assert store.route(x, E_CALLER, clock.wall(), again.ext) == again


def test_unbind_frees_the_extension_and_trace_finds_every_axe_binding(
        store: RuleStore, clock: FakeClock) -> None:
    one = store.create(mode="axe", tenant="demo", a=A, x=X, ext="1111")
    two = store.create(mode="axe", tenant="demo", a=C, b=D, x=X, ext="2222")
    held_at = clock.wall()
    clock.advance(5)
    store.delete(one.id)
    assert store.route(X, E_CALLER, clock.wall(), "1111") is None
    assert store.route(X, A, clock.wall()) == two        # any live binding on X: ask for E
    found = {h.binding.id: h for h in store.trace(X, held_at)}
    assert set(found) == {one.id, two.id}
    assert found[one.id].end_reason == "unbind" and found[two.id].ended_at is None
    assert store.create(mode="axe", tenant="demo", a=A, x=X, ext="1111").ext == "1111"


@pytest.mark.parametrize("ext", ["", "12a4", "123456789", "１２３４"])
def test_route_with_a_bad_extension_finds_nothing(store: RuleStore, clock: FakeClock,
                                                  ext: str) -> None:
    store.create(mode="axe", tenant="demo", a=A, x=X, ext="1234")
    assert store.route(X, E_CALLER, clock.wall(), ext) is None


# -- AXYB -------------------------------------------------------------------------------------
def test_axyb_a_dials_x_b_dials_y(store: RuleStore, clock: FakeClock) -> None:
    made = store.create(mode="axyb", tenant="demo", a=A, b=B, x=X, y=Y)
    assert (made.x, made.y, made.to_json()["y"]) == (X, Y, Y)
    now = clock.wall()
    assert call(store, X, A, now) == Target(B, Y, "a_to_b")     # B sees Y
    assert call(store, Y, B, now) == Target(A, X, "b_to_a")     # A sees X
    # A dialling Y, B dialling X, a stranger on either: 403, not 404.
    for dialled, caller in ((Y, A), (X, B), (X, C), (Y, C)):
        assert call(store, dialled, caller, now) is Refusal.FORBIDDEN
    assert [b.id for b in store.list(x=Y)] == [made.id]
    assert [b.id for b in store.list(x=X)] == [made.id]


def test_axyb_allocates_a_y_apart_from_x(store: RuleStore) -> None:
    made = store.create(mode="axyb", tenant="demo", a=A, b=B)
    assert made.y is not None and made.x != made.y
    assert all(n.startswith("70010000000000") for n in (made.x, made.y))
    given_x = store.create(mode="axyb", tenant="demo", a=C, b=D, x=X)
    assert given_x.x == X and given_x.y not in (None, X)
    usage = {u.pool.tenant: u for u in store.list_pools()}["demo"]
    assert usage.xs_used == len({made.x, made.y, given_x.x, given_x.y})


@pytest.mark.parametrize(("kwargs", "field", "says"), [
    ({"x": X, "y": X}, "y", "must differ from x"),
    ({"x": X, "y": "700200000000001"}, "y", "not in tenant demo's pool"),
    ({"x": X, "y": "7001"}, "y", "15-digit"),
    ({"b": None}, "b", "required"),
    ({"ext": "1234"}, "ext", "only an AXE binding"),
])
def test_axyb_refusals_name_the_field(store: RuleStore, kwargs: dict[str, Any], field: str,
                                      says: str) -> None:
    args: dict[str, Any] = {"mode": "axyb", "tenant": "demo", "a": A, "b": B, **kwargs}
    with pytest.raises(RefusedError) as exc:
        store.create(**args)
    assert says in refused(exc, field)
    assert store.list() == []


def test_axyb_pairs_are_unique_on_x_and_on_y(store: RuleStore) -> None:
    store.create(mode="axyb", tenant="demo", a=A, b=B, x=X, y=Y)
    with pytest.raises(ConflictError) as exc:
        store.create(mode="axyb", tenant="demo", a=A, b=D, x=X, y=X2)
    assert "already bound on this X" in refused(exc, "a")
    with pytest.raises(ConflictError) as exc2:
        store.create(mode="axyb", tenant="demo", a=C, b=B, x=X2, y=Y)
    assert "already bound on this Y" in refused(exc2, "b")
    # AXB and AXYB pairs share numbers; each caller still has one answer per number.
    pair = store.create(mode="axb", tenant="demo", a=C, b=D, x=Y)
    assert store.route(Y, C, 0.0 + pair.created_at) == pair
    # Y of an AXYB binding may not go on an AXN or AXE number.
    store.create(mode="axn", tenant="demo", a=D, x="700100000000005")
    with pytest.raises(ConflictError) as exc3:
        store.create(mode="axyb", tenant="demo", a=C, b=A, x=X2, y="700100000000005")
    assert "Y carries an AXN binding" in refused(exc3, "y")


def test_axyb_y_exhausted_when_the_pool_has_one_number(store: RuleStore) -> None:
    store.sync_tenants(MORE_TENANTS)
    with pytest.raises(PoolExhausted) as exc:
        store.create(mode="axyb", tenant="tiny", a=A, b=B)
    assert "no free Y in tenant tiny's pool" in refused(exc, "y")
    assert store.list(tenant="tiny") == []


def test_axyb_unbind_expiry_and_trace_by_y(store: RuleStore, clock: FakeClock) -> None:
    made = store.create(mode="axyb", tenant="demo", a=A, b=B, x=X, y=Y, ttl=60)
    at = clock.wall()
    assert [h.binding.id for h in store.trace(Y, at)] == [made.id]
    clock.advance(61)
    assert store.sweep(clock.wall()) == 1
    assert store.route(Y, B, clock.wall()) is None and store.route(X, A, clock.wall()) is None
    for number in (X, Y):
        [held] = store.trace(number, at)
        assert (held.binding.id, held.end_reason) == (made.id, "expiry")
    assert all(u.xs_used == 0 for u in store.list_pools("demo"))
    again = store.create(mode="axyb", tenant="demo", a=A, b=B, x=X, y=Y)
    store.delete(again.id)
    assert store.route(Y, B, clock.wall()) is None


def test_axyb_direction_rule_and_record(store: RuleStore) -> None:
    made = store.create(mode="axyb", tenant="demo", a=A, b=B, direction="a_to_b", record=True)
    assert made.direction == "a_to_b" and made.record is True
    assert made.to_json()["record"] is True
    assert store.get(made.id) == made
    with pytest.raises(RefusedError) as exc:
        store.create(mode="axn", tenant="demo", a=C, direction="a_to_b")
    assert "AXB or AXYB" in refused(exc, "direction")
    with pytest.raises(RefusedError) as exc2:
        store.create(mode="axb", tenant="demo", a=C, b=D, record="yes")  # type: ignore[arg-type]
    assert "true or false" in refused(exc2, "record")


def test_update_ttl_keeps_the_new_fields(store: RuleStore) -> None:
    made = store.create(mode="axyb", tenant="demo", a=A, b=B, x=X, y=Y, record=True)
    longer = store.update_ttl(made.id, 0)
    assert (longer.y, longer.record, longer.expires_at) == (Y, True, None)
    axe = store.create(mode="axe", tenant="demo", a=C, x=X2, ext="4321")
    assert store.update_ttl(axe.id, 99).ext == "4321"


# -- the bulk path ----------------------------------------------------------------------------
def test_import_lines_of_the_new_modes(store: RuleStore) -> None:
    rows = [
        BindingRequest("axe", A, B, X, ext="0007"),
        BindingRequest("axe", C, None, X, ext="0007"),          # extension taken: same batch
        BindingRequest("axe", C, None, X),
        BindingRequest("axyb", A, B, X2, y=Y, record=True),
        BindingRequest("axyb", C, B, "700100000000003", y=Y),    # B already on Y
        BindingRequest("axb", A, B, X2),                         # A already on X2 (AXYB)
        BindingRequest("axn", D, record=True),
        BindingRequest("axb", "13500000007", "13500000008", X),   # X is an AXE number
        BindingRequest("axn", "13500000009", None, X),
    ]
    got = list(store.create_many(enumerate(rows, 1), batch=100, default_tenant="demo"))
    assert [(o.line, o.field) for o in got if o.binding is None] == [
        (2, "ext"), (5, "b"), (6, "a"), (8, "x"), (9, "x")]
    made = {o.line: o.binding for o in got if o.binding is not None}
    assert made[1].ext == "0007" and made[3].ext not in (None, "0007")
    assert made[4].y == Y and made[4].record and made[7].record
    assert store.route(X, E_CALLER, 0.0 + made[3].created_at, made[3].ext) == made[3]
    assert store.route(Y, B, made[4].created_at) == made[4]


# -- records ----------------------------------------------------------------------------------
def test_codec_carries_the_new_fields_sealed(store: RuleStore) -> None:
    b = Binding("id1", "axyb", "demo", X, A, B, 1.0, None, y=Y, record=True)
    e = Binding("id2", "axe", "demo", X2, A, None, 1.0, 5.0, ext="0042")
    for binding in (b, e):
        raw = codec.encode_binding(binding, store.keys)
        assert codec.decode_binding(raw, store.keys) == binding
        assert A.encode() not in raw
        assert codec.binding_live(raw, 4.0) and codec.binding_live(raw, 6.0) == (
            binding.expires_at is None)
    # A binding without them is encoded as before (older versions read it unchanged).
    plain = Binding("id3", "axb", "demo", X, A, B, 1.0, None)
    assert codec.encode_plain_binding(plain).endswith(b"\x1f")
    assert codec.route_keys(store.keys, e)[1] == X2.encode() + b"#0042"
    assert codec.route_keys(store.keys, b)[1] == Y.encode() + store.keys.index(Y, B)


def test_target_is_the_one_routing_rule_for_every_mode() -> None:
    axb = Binding("i", "axb", "t", X, A, B, 0.0, None)
    axn = Binding("i", "axn", "t", X, A, None, 0.0, None)
    assert target(axb, X, A) == Target(B, X, "a_to_b")
    assert target(axb, X, B) == Target(A, X, "b_to_a")
    assert target(axb, X, C) is Refusal.FORBIDDEN
    assert target(axn, X, C) == Target(A, X, "n_to_a")
    assert target(axn, X, A) is Refusal.FORBIDDEN
    odd = Binding("i", "axq", "t", X, A, B, 0.0, None)
    assert target(odd, X, A) is Refusal.FORBIDDEN


def test_rng_of_the_store_draws_the_extensions(clock: FakeClock) -> None:
    from sipmask.store import MemoryStore
    runs = []
    for _ in range(2):
        s = MemoryStore(clock, TENANTS, rng=random.Random(11))
        runs.append([s.create(mode="axe", tenant="demo", a=f"1350000000{i}", x=X).ext
                     for i in range(5)])
    assert runs[0] == runs[1] and len(set(runs[0])) == 5


def test_rekey_makes_the_extension_and_y_keys_again(tmp_path: Any) -> None:
    import os

    from sipmask.store import LmdbStore
    from sipmask.store.crypto import KEY_BYTES
    clock = FakeClock()
    store = LmdbStore(tmp_path / "s", clock, key_file=tmp_path / "old")
    try:
        store.sync_tenants(TENANTS)
        axe = store.create(mode="axe", tenant="demo", a=A, b=B, x=X, ext="0555")
        axyb = store.create(mode="axyb", tenant="demo", a=C, b=D, x=X2, y=Y)
        store.rekey(os.urandom(KEY_BYTES))
        now = clock.wall()
        assert store.route(X, E_CALLER, now, "0555") == axe
        assert store.route(X, A, now) == axe                 # A's key, made with the new key
        assert store.route(Y, D, now) == axyb and store.route(X2, C, now) == axyb
    finally:
        store.close()


def test_the_call_path_lookup_takes_the_extension(store: RuleStore, clock: FakeClock) -> None:
    # store/offload.lookup: PostgreSQL's lookup threads (route_soon), LMDB and memory inline.
    from sipmask.store.offload import lookup
    made = store.create(mode="axe", tenant="demo", a=A, x=X, ext="0777")
    now = clock.wall()
    assert lookup(store, X, E_CALLER, now, "0777").result(timeout=10) == made
    assert lookup(store, X, E_CALLER, now, "0778").result(timeout=10) is None
    assert lookup(store, X, E_CALLER, now).result(timeout=10) == made     # ask for E
