"""The binding rules (issue "Bindings store…", section 2), against both stores."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from sipmask.clock import FakeClock
from sipmask.errors import ConflictError, PoolExhausted, RecordNotFound, RefusedError
from sipmask.store import MemoryStore, codec
from sipmask.store.base import BindingRequest, ImportOutcome
from sipmask.store.rules import MAX_CALL_S, MAX_CONCURRENT, MAX_TTL, RuleStore
from tests.support.store import TENANTS, A, B, C, D, X


def refused(exc: pytest.ExceptionInfo[Any], field: str) -> str:
    error: RefusedError = exc.value
    assert error.field == field, error
    return error.message


# -- records and normalisation ----------------------------------------------------------------
def test_create_normalises_inputs_and_gives_contract_json(store: RuleStore) -> None:
    b = store.create(mode="axb", tenant="demo", a="+86 138-0000-0001", b="0086 13900000002",
                     x="86" + X)
    assert (b.mode, b.tenant, b.x, b.a, b.b) == ("axb", "demo", X, A, B)
    assert b.created_at == 1_800_000_000.0 and b.expires_at == 1_800_000_000.0 + 7200
    out = b.to_json()
    assert {"id", "mode", "tenant", "x", "a", "b", "created_at", "expires_at"} <= set(out)
    assert out["created_at"] == "2027-01-15T08:00:00Z"
    assert out["expires_at"] == "2027-01-15T10:00:00Z"
    json.dumps(out)
    assert store.get(b.id) == b


@pytest.mark.parametrize(("kwargs", "field", "says"), [
    ({"mode": "axb", "a": "1234", "b": B}, "a", "not a valid mobile or fixed-line number"),
    ({"mode": "axb", "a": A, "b": "+1 555 0100"}, "b", "only +86"),
    ({"mode": "axb", "a": X, "b": B}, "a", "700 number cannot be a real party"),
    ({"mode": "axb", "a": A, "b": None}, "b", "required"),
    ({"mode": "axb", "a": "", "b": B}, "a", "required"),
    ({"mode": "axb", "a": A, "b": "+86" + A}, "b", "must differ from a"),
    ({"mode": "axn", "a": A, "b": B}, "b", "no b"),
    ({"mode": "axz", "a": A, "b": B}, "mode", "axb, axn, axe, axyb"),
    ({"mode": "axb", "a": A, "b": B, "x": "70010000000001"}, "x", "15-digit"),
    ({"mode": "axb", "a": A, "b": B, "x": "700100000000099"}, "x", "not in tenant demo's"),
    ({"mode": "axb", "a": A, "b": B, "x": "700200000000001"}, "x", "not in tenant demo's"),
    ({"mode": "axb", "a": A, "b": B, "ttl": -1}, "ttl", "0 (no expiry)"),
    ({"mode": "axb", "a": A, "b": B, "ttl": "60"}, "ttl", "whole number"),
    ({"mode": "axb", "a": A, "b": B, "tenant": "nobody"}, "tenant", "unknown tenant"),
])
def test_refusals_name_the_field(store: RuleStore, kwargs: dict[str, object], field: str,
                                 says: str) -> None:
    kwargs.setdefault("tenant", "demo")
    with pytest.raises(RefusedError) as exc:
        store.create(**kwargs)  # type: ignore[arg-type]
    assert says in refused(exc, field)
    assert store.list() == []


def test_tenant_defaults_only_when_there_is_one(store: RuleStore, clock: FakeClock) -> None:
    with pytest.raises(RefusedError) as exc:
        store.create(mode="axb", tenant=None, a=A, b=B)
    assert "more than one tenant" in refused(exc, "tenant")
    single = MemoryStore(clock, {"demo": TENANTS["demo"]})
    assert single.create(mode="axb", tenant=None, a=A, b=B).tenant == "demo"


# -- AXB / AXN on one X -----------------------------------------------------------------------
def test_an_x_carries_many_pairs_but_a_number_once(store: RuleStore) -> None:
    store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    store.create(mode="axb", tenant="demo", a=C, b=D, x=X)
    with pytest.raises(ConflictError) as exc:
        store.create(mode="axb", tenant="demo", a=A, b=C.replace("137", "135"), x=X)
    assert "already bound" in refused(exc, "a")
    with pytest.raises(ConflictError) as exc2:
        store.create(mode="axb", tenant="demo", a="13500000005", b=B, x=X)
    refused(exc2, "b")
    other = store.create(mode="axb", tenant="demo", a=A, b=B, x="700100000000002")
    assert other.x != X
    assert {b.a for b in store.list(x=X)} == {A, C}


def test_axn_takes_its_x_whole(store: RuleStore) -> None:
    store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    with pytest.raises(ConflictError) as exc:
        store.create(mode="axn", tenant="demo", a=C, x=X)
    refused(exc, "x")
    store.create(mode="axn", tenant="demo", a=C, x="700100000000002")
    for kwargs in ({"mode": "axn", "a": D}, {"mode": "axb", "a": D, "b": "13500000005"}):
        with pytest.raises(ConflictError) as exc:
            store.create(tenant="demo", x="700100000000002", **kwargs)  # type: ignore[arg-type]
        assert "AXN" in refused(exc, "x")


def test_route_axb(store: RuleStore, clock: FakeClock) -> None:
    now = clock.wall()
    b = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    assert store.route(X, A, now) == b
    assert store.route(X, B, now) == b
    # A stranger gets a binding on X (so routing answers 403, not 404)…
    stranger = store.route(X, C, now)
    assert stranger is not None and C not in (stranger.a, stranger.b)
    # …and an X nobody holds is None (404).
    assert store.route("700100000000002", A, now) is None
    assert store.route("700200000000001", A, now) is None


def test_route_axn_anyone_reaches_a(store: RuleStore, clock: FakeClock) -> None:
    b = store.create(mode="axn", tenant="demo", a=A, x=X)
    assert store.route(X, C, clock.wall()) == b
    assert store.route(X, A, clock.wall()) == b   # routing refuses A itself (no loop)
    assert b.b is None and b.to_json()["b"] is None


# -- TTL, expiry, sweep -----------------------------------------------------------------------
def test_expired_binding_stops_routing_at_once_then_is_swept(store: RuleStore,
                                                             clock: FakeClock) -> None:
    b = store.create(mode="axb", tenant="demo", a=A, b=B, x=X, ttl=60)
    clock.advance(59.9)
    assert store.route(X, A, clock.wall()) == b
    clock.advance(0.1)
    assert store.route(X, A, clock.wall()) is None
    assert store.route(X, C, clock.wall()) is None
    with pytest.raises(RecordNotFound):
        store.get(b.id)
    assert store.list() == []
    assert store.sweep(clock.wall()) == 1
    assert store.sweep(clock.wall()) == 0
    assert store.list_pools("demo")[0].bindings == 0
    last = store.audit(limit=1)[0]
    assert (last.action, last.actor, last.subject) == ("expire", "sweep", b.id)


def test_sweep_takes_only_the_due_and_respects_limit(store: RuleStore,
                                                     clock: FakeClock) -> None:
    for i in range(5):
        store.create(mode="axn", tenant="demo", a=f"1380000000{i}", ttl=10 + i)
    keep = store.create(mode="axn", tenant="demo", a="13900000009", ttl=0)
    clock.advance(12.5)
    assert store.sweep(clock.wall(), limit=2) == 2
    assert store.sweep(clock.wall(), limit=100) == 1
    assert len(store.list()) == 3
    clock.advance(10 ** 8)
    assert store.sweep(clock.wall()) == 2
    assert store.list() == [keep] and keep.expires_at is None


def test_expired_pair_does_not_block_a_new_one(store: RuleStore, clock: FakeClock) -> None:
    old = store.create(mode="axn", tenant="demo", a=A, x=X, ttl=5)
    clock.advance(6)
    new = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    assert store.route(X, A, clock.wall()) == new
    with pytest.raises(RecordNotFound):
        store.get(old.id)
    assert store.sweep(clock.wall()) == 0


def test_update_ttl_and_delete(store: RuleStore, clock: FakeClock) -> None:
    b = store.create(mode="axb", tenant="demo", a=A, b=B, x=X, ttl=10)
    clock.advance(5)
    longer = store.update_ttl(b.id, 100)
    assert longer.expires_at == clock.wall() + 100 and longer.created_at == b.created_at
    clock.advance(50)
    assert store.route(X, B, clock.wall()) == longer
    assert store.sweep(clock.wall()) == 0
    assert store.update_ttl(b.id, 0).expires_at is None
    with pytest.raises(RefusedError):
        store.update_ttl(b.id, -5)
    store.delete(b.id)
    assert store.route(X, A, clock.wall()) is None
    with pytest.raises(RecordNotFound):
        store.delete(b.id)
    store.create(mode="axb", tenant="demo", a=A, b=B, x=X)   # the pair is free again


def test_a_tenant_sees_only_its_own(store: RuleStore) -> None:
    b = store.create(mode="axb", tenant="demo", a=A, b=B)
    for call in (lambda: store.get(b.id, "acme"), lambda: store.delete(b.id, "acme"),
                 lambda: store.update_ttl(b.id, 5, "acme")):
        with pytest.raises(RecordNotFound):
            call()
    assert store.get(b.id, "demo") == b
    assert store.list(tenant="acme") == [] and store.list(tenant="demo") == [b]


# -- allocation -------------------------------------------------------------------------------
def test_allocation_fills_the_pool_then_says_exhausted(store: RuleStore) -> None:
    xs = {store.create(mode="axn", tenant="demo", a=f"1380000{i:04d}").x for i in range(10)}
    assert len(xs) == 10 and all(x.startswith("70010000000000") for x in xs)
    with pytest.raises(PoolExhausted) as exc:
        store.create(mode="axn", tenant="demo", a="13900000000")
    assert "demo" in refused(exc, "x")
    assert store.create(mode="axn", tenant="acme", a="13900000000").x.startswith("7002")


def test_allocation_never_puts_a_number_twice_on_an_x(store: RuleStore) -> None:
    made = [store.create(mode="axb", tenant="demo", a=A, b=f"1390000{i:04d}") for i in range(10)]
    assert len({b.x for b in made}) == 10
    with pytest.raises(PoolExhausted):
        store.create(mode="axb", tenant="demo", a=A, b="13500000005")
    store.create(mode="axb", tenant="demo", a=C, b=D)


def test_allocation_spreads_over_the_pool(store: RuleStore) -> None:
    for i in range(100):
        store.create(mode="axb", tenant="demo", a=f"1380000{i:04d}", b=f"1390000{i:04d}")
    per_x = Counter(b.x for b in store.list())
    assert len(per_x) == 10
    assert max(per_x.values()) <= 14 and min(per_x.values()) >= 6, per_x


# -- pools ------------------------------------------------------------------------------------
def test_pools_never_overlap_across_tenants(store: RuleStore) -> None:
    with pytest.raises(ConflictError) as exc:
        store.add_pool("acme", "700100000000005-700100000000020")
    assert "tenant demo" in refused(exc, "range")
    with pytest.raises(RefusedError) as exc2:
        store.add_pool("nobody", "700300000000000-700300000000009")
    refused(exc2, "tenant")
    with pytest.raises(RefusedError) as exc3:
        store.add_pool("acme", "800300000000000-800300000000009")
    refused(exc3, "range")
    added = store.add_pool("acme", "700300000000000-700300000000099")
    assert (added.source, added.size) == ("store", 100)
    b = store.create(mode="axb", tenant="acme", a=A, b=B, x="700300000000050")
    with pytest.raises(ConflictError) as exc4:
        store.remove_pool("acme", "700300000000000-700300000000099")
    assert "1 binding" in refused(exc4, "range")
    store.delete(b.id)
    store.remove_pool("acme", "700300000000000-700300000000099")
    with pytest.raises(RecordNotFound):
        store.remove_pool("acme", "700300000000000-700300000000099")
    with pytest.raises(RefusedError) as exc5:
        store.remove_pool("demo", "700100000000000-700100000000009")
    assert "config" in refused(exc5, "range")


def test_list_pools_counts_use(store: RuleStore) -> None:
    store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    store.create(mode="axb", tenant="demo", a=C, b=D, x=X)
    store.create(mode="axn", tenant="demo", a=A, x="700100000000002")
    usage = {u.pool.tenant: u for u in store.list_pools()}
    assert (usage["demo"].xs_used, usage["demo"].bindings) == (2, 3)
    assert (usage["acme"].xs_used, usage["acme"].bindings) == (0, 0)
    assert usage["demo"].to_json()["range"] == "700100000000000-700100000000009"
    assert store.tenants() == ["acme", "demo"]


# -- audit ------------------------------------------------------------------------------------
def test_every_change_is_audited_with_numbers_masked(store: RuleStore,
                                                     clock: FakeClock) -> None:
    clock.advance(1)   # after the config seeding's pool_add entries
    start = clock.wall()
    b = store.create(mode="axb", tenant="demo", a=A, b=B, x=X, actor="api")
    clock.advance(1)
    store.update_ttl(b.id, 60, actor="api")
    clock.advance(1)
    store.delete(b.id, actor="cli")
    store.create(mode="axn", tenant="acme", a=C, actor="import")
    entries = store.audit(since=start)
    assert [(e.action, e.actor, e.tenant) for e in entries] == [
        ("create", "api", "demo"), ("update", "api", "demo"), ("delete", "cli", "demo"),
        ("create", "import", "acme")]
    assert [e.at - start for e in entries] == [0, 1, 2, 2]
    assert entries[0].data["a"] == A           # stored whole…
    shown = json.dumps([e.to_json() for e in entries])
    assert A not in shown and B not in shown and C not in shown   # …shown masked
    assert "138****0001" in shown and X in shown
    assert [e.action for e in store.audit(tenant="acme")] == ["pool_add", "create"]
    assert [e.action for e in store.audit(limit=2)] == ["delete", "create"]
    assert store.audit(since=start + 1.5)[0].action == "delete"
    with pytest.raises(RefusedError):
        store.create(mode="axb", tenant="demo", a=A, b=B, actor="someone")


# -- bulk -------------------------------------------------------------------------------------
def test_create_many_reports_each_line(store: RuleStore) -> None:
    rows = [
        (1, BindingRequest("axb", A, B, X)),
        (2, BindingRequest("axb", A, C, X)),             # A already on X in this batch
        (3, BindingRequest("axb", "12", B)),
        (4, BindingRequest("axn", D, tenant="acme")),
        (5, BindingRequest("axb", C, D, tenant="demo")),
    ]
    out = list(store.create_many(rows, batch=2, default_tenant="demo"))
    assert [o.line for o in out] == [1, 2, 3, 4, 5]
    assert [(o.field, o.binding is not None) for o in out] == [
        (None, True), ("a", False), ("a", False), (None, True), (None, True)]
    assert out[3].binding is not None and out[3].binding.tenant == "acme"
    assert len(store.list()) == 3
    assert [e.actor for e in store.audit()][-3:] == ["import"] * 3


def _plain_or_refused(outcome: ImportOutcome) -> tuple[object, ...]:
    b = outcome.binding
    if b is None:
        return (outcome.line, outcome.field, outcome.reason)
    return (outcome.line, *b._replace(id=""))


@pytest.mark.parametrize("batch", [3, 100])
def test_create_many_decides_every_line_as_create_does(store: RuleStore, clock: FakeClock,
                                                       batch: int) -> None:
    # The bulk path (rules._BulkWork: held writes, a fast path for plain lines) against
    # create() one line at a time on a second store: the same outcome per line, and the
    # same bindings, uses and audit afterwards.
    x = [f"70010000000000{i}" for i in range(10)]
    # The same key: a stranger's route() answers with the first live binding on X in
    # route-key order, which is the keyed hashes' order.
    reference = MemoryStore(clock, TENANTS, rng=random.Random(4), keys=store.keys)
    store.rng = random.Random(4)
    for s in (store, reference):   # an expired pair that an import line must purge first
        s.create(mode="axb", tenant="demo", a=A, b=B, x=x[6], ttl=1)
    clock.advance(2)
    rows = [
        BindingRequest("axb", A, B, x[1]),
        BindingRequest("axb", A, C, x[1]),                  # A already on X, same batch
        BindingRequest("axb", C, B, x[1]),                  # B already on X
        BindingRequest("axn", D, None, x[1]),               # X has AXB bindings
        BindingRequest("axn", D, None, x[2]),
        BindingRequest("axb", C, D, x[2]),                  # AXN takes X whole
        BindingRequest("axb", "+86 137 0000 0003", D, x[3]),  # normalised the long way
        BindingRequest("axb", C, C, x[4]),
        BindingRequest("axb", C, D, "700900000000001"),     # not in the pool
        BindingRequest("axb", C, D, x[4], tenant="acme"),   # not acme's
        BindingRequest("axb", C, D, x[4], tenant="nope"),
        BindingRequest("axb", C, D, x[4], tenant=""),       # two tenants: required
        BindingRequest("axb", C, D, x[4], ttl=-1),
        BindingRequest("axb", C, D, x[4], ttl=True),        # type: ignore[arg-type]
        BindingRequest("axb", C, D, x[4], direction="a_to_b"),
        BindingRequest("axb", A, B),                         # allocated
        BindingRequest("axn", A, B, x[5]),                   # an AXN has no b
        BindingRequest("axz", A, B, x[5]),                   # no such mode
        BindingRequest("axb", A, D, x[5], ttl=0),
        BindingRequest("axb", A, C, x[6]),                   # over the expired pair
        BindingRequest("axb", C, D, f" {x[7]} "),
        BindingRequest("axb", "", D, x[7]),
        BindingRequest("axb", A, "139", x[7]),
        BindingRequest("axn", C, "", x[8]),
        BindingRequest("axb", A, C, x[8]),                   # X has an AXN binding
        BindingRequest("axb", A, B, ""),                     # allocated again: a new X
        *(BindingRequest("axn", f"1350000000{i}") for i in range(6)),  # till exhausted
        BindingRequest("axb", C, "13500000001"),
    ]
    got = list(store.create_many(enumerate(rows, 1), batch=batch, default_tenant="demo"))
    want = []
    for line, req in enumerate(rows, 1):
        try:
            made = reference.create(mode=req.mode, tenant=req.tenant or (
                                        "demo" if req.tenant is None else ""),
                                    a=req.a, b=req.b, x=req.x, ttl=req.ttl, actor="import",
                                    direction=req.direction)
            want.append(ImportOutcome(line, made))
        except RefusedError as exc:
            want.append(ImportOutcome(line, field=exc.field, reason=exc.message))
    assert [_plain_or_refused(o) for o in got] == [_plain_or_refused(o) for o in want]
    assert sum(o.binding is not None for o in got) == 12
    assert [o.field for o in got[-4:]] == ["x", "x", "x", None]

    def state(s: RuleStore) -> tuple[object, ...]:
        bindings = sorted(tuple(b._replace(id="")) for b in s.list())
        audit = [(e.action, e.actor, dict(e.data)) for e in s.audit(limit=1000)]
        pools = [u.to_json() for u in s.list_pools()]
        routes = [s.route(xi, n, clock.wall()) for xi in x for n in (A, B, C, D)]
        return bindings, audit, pools, [r and r._replace(id="") for r in routes]
    assert state(store) == state(reference)


def test_create_many_makes_a_batch_again_when_an_id_is_taken(
        store: RuleStore, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    real = codec.new_ids
    draws = []

    def clashing(now: float, count: int) -> list[str]:
        draws.append(count)
        ids = real(now, count)
        return ids if len(draws) > 1 else [*ids[:-1], taken.id]   # pop() takes the last
    monkeypatch.setattr(codec, "new_ids", clashing)
    out = list(store.create_many([(1, BindingRequest("axb", C, D, X, tenant="demo"))]))
    assert out[0].binding is not None and out[0].binding.id != taken.id
    assert len(draws) == 2 and store.get(taken.id) == taken
    assert len(store.list(x=X)) == 2 and [e.action for e in store.audit()][-2:] == [
        "create", "create"]
    assert len(store.audit(limit=1000)) == len({e.seq for e in store.audit(limit=1000)})


# -- every number has a range (issue 12: 10**400 was stored, then overflowed the call path) --
@pytest.mark.parametrize(("kwargs", "field"), [
    ({"ttl": 10 ** 400}, "ttl"),
    ({"max_duration_s": 10 ** 400}, "max_duration_s"),
    ({"max_duration_s": MAX_CALL_S + 1}, "max_duration_s"),
    ({"max_concurrent": 10 ** 30}, "max_concurrent"),
    ({"max_concurrent": MAX_CONCURRENT + 1}, "max_concurrent"),
])
def test_numbers_out_of_range_are_refused_by_name(store: RuleStore, kwargs: dict[str, object],
                                                  field: str) -> None:
    with pytest.raises(RefusedError) as exc:
        store.create(mode="axb", tenant="demo", a=A, b=B, **kwargs)  # type: ignore[arg-type]
    assert "10000000000" not in refused(exc, field)             # the range, not the value
    assert store.list() == []
    made = store.create(mode="axb", tenant="demo", a=A, b=B, max_duration_s=MAX_CALL_S,
                        max_concurrent=MAX_CONCURRENT, ttl=MAX_TTL)
    assert (made.max_duration_s, made.max_concurrent) == (MAX_CALL_S, MAX_CONCURRENT)


def test_imported_numbers_are_held_to_the_same_ranges(store: RuleStore) -> None:
    lines = [(1, BindingRequest("axb", A, B, ttl=10 ** 400, tenant="demo")),
             (2, BindingRequest("axb", A, B, tenant="demo", max_duration_s=10 ** 400)),
             (3, BindingRequest("axb", A, B, tenant="demo", max_concurrent=-1))]
    assert [(o.line, o.field) for o in store.create_many(lines)] == [
        (1, "ttl"), (2, "max_duration_s"), (3, "max_concurrent")]


@pytest.mark.parametrize(("call", "field"), [
    (lambda s: s.list(limit=0), "limit"),
    (lambda s: s.list(limit=10 ** 400), "limit"),
    (lambda s: s.audit(limit=-1), "limit"),
    (lambda s: s.audit(since=1e300), "since"),
    (lambda s: s.audit(since=float("nan")), "since"),
    (lambda s: s.audit(since=-1.0), "since"),
    (lambda s: s.update_ttl("x", 10 ** 400), "ttl"),
])
def test_query_numbers_out_of_range_are_refused_by_name(store: RuleStore, call: Any,
                                                        field: str) -> None:
    with pytest.raises(RefusedError) as exc:
        call(store)
    assert exc.value.field == field
