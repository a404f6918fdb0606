"""Issue 14 §2: a stolen LMDB file or a `pg_dump` shows no real number. Bindings (AXB,
AXN, with a blacklist), the audit log, CDRs, the answered-call journal and the event outbox
are written through their own modules; then every byte of the file, and every key and value
of every database (or the whole dump of the PostgreSQL database), is searched for the real
numbers in any form a store could hold them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrLog
from sipmask.clock import FakeClock
from sipmask.events.outbox import Outbox, new_event
from sipmask.store import LmdbStore
from tests.support.postgres import DATABASE, PgServer
from tests.support.store import TENANTS, A, B, C, D, X, every_record, forms

if TYPE_CHECKING:
    from sipmask.store.lmdb import AnyStore

X2 = "700200000000003"
REAL = (A, B, C, D)




def in_dump(number: str) -> list[bytes]:
    """forms(), and each as pg_dump writes a bytea: hex digits."""
    return [*forms(number), *(f.hex().encode() for f in forms(number))]


def fill(store: AnyStore, clock: FakeClock) -> None:
    store.sync_tenants(TENANTS)
    axb = store.create(mode="axb", tenant="demo", a=A, b=B, x=X, actor="api",
                       blacklist=(D,))
    store.create(mode="axn", tenant="acme", a=C, x=X2, ttl=0)
    gone = store.create(mode="axb", tenant="demo", a=C, b=D)
    store.update_ttl(axb.id, 60)
    store.delete(gone.id)                      # an unbind: audit entry with its numbers
    cdrs = CdrLog(store, node="n1")
    record = Cdr(call_id="c1", tenant="demo", binding_id=axb.id, x=X, caller=A, callee=B,
                 direction="a_to_b", invite_at=clock.wall(), ring_at=None, answer_at=None,
                 end_at=clock.wall() + 1, duration_s=0.0, release_side="callee",
                 sip_status=486, unconnected_cause="callee_failed")
    cdrs.write(record)
    cdrs.call_up(replace(record, call_id="c2", caller=B, callee=A, direction="b_to_a",
                         answer_at=clock.wall(), end_at=None, sip_status=200,
                         unconnected_cause="none", release_side=None))
    cdrs.heartbeat(clock.wall())
    outbox = Outbox(store)
    outbox.enqueue(new_event("ring", call_id="c1", binding_id=axb.id, tenant="demo", x=X,
                             at=clock.wall()))
    outbox.enqueue(new_event("cdr", call_id="c1", binding_id=axb.id, tenant="demo", x=X,
                             at=clock.wall(), cdr=record))
    clock.advance(120)
    assert store.sweep(clock.wall()) == 1       # the AXB binding expires: swept


def fill_lmdb(path: Path) -> None:
    clock = FakeClock()
    store = LmdbStore(path, clock, key_file=path.parent / "s.key")
    try:
        fill(store, clock)
    finally:
        store.close()


@pytest.fixture(params=["lmdb", "postgres"])
def filled(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], AnyStore]:
    """A store filled and closed; the factory opens it again."""
    if request.param == "lmdb":
        path = tmp_path / "s.lmdb"
        fill_lmdb(path)
        return lambda: LmdbStore(path, FakeClock(), key_file=tmp_path / "s.key")
    from sipmask.store.postgres import PostgresStore
    dsn, key = request.getfixturevalue("pg_dsn"), request.getfixturevalue("pg_key")
    fill_pg(dsn, key)
    return lambda: PostgresStore(dsn, FakeClock(), pool_size=2, call_workers=1, key_file=key)


def fill_pg(dsn: str, key: Path) -> None:
    from sipmask.store.postgres import PostgresStore
    clock = FakeClock()
    store = PostgresStore(dsn, clock, pool_size=2, call_workers=1, key_file=key)
    try:
        fill(store, clock)
    finally:
        store.close()


def test_no_real_number_is_in_the_file_or_any_record(tmp_path: Path) -> None:
    path = tmp_path / "s.lmdb"
    fill_lmdb(path)
    raw = (path / "data.mdb").read_bytes()
    records = every_record(path)
    for number in REAL:
        for form in forms(number):
            assert form not in raw, f"a real number ({number[:3]}…) is in data.mdb"
            hits = [r for r in records if form in r]
            assert hits == [], f"a real number ({number[:3]}…) is in {len(hits)} record(s)"
    # X numbers stay in clear: the store is still indexed by them.
    assert X.encode() in raw and X2.encode() in raw


def test_no_real_number_is_in_a_pg_dump(pg_server: PgServer, pg_dsn: str,
                                        pg_key: Path) -> None:
    fill_pg(pg_dsn, pg_key)
    dump = pg_server.pg_dump(DATABASE)
    for table in ("bindings", "route", "audit", "history", "cdr_binding", "calls_up",
                  "outbox"):
        assert f"COPY sipmask.{table} ".encode() in dump
    assert dump.count(b"\\x") > 20             # the records are in it, as hex
    for number in REAL:
        for form in in_dump(number):
            assert form not in dump, f"a real number ({number[:3]}…) is in the dump"
    assert X.encode().hex().encode() in dump and X2.encode().hex().encode() in dump


def test_what_is_sealed_still_reads_back(filled: Callable[[], AnyStore]) -> None:
    store = filled()
    try:
        live = store.list()
        assert [(b.mode, b.a, b.b) for b in live] == [("axn", C, None)]
        assert store.route(X2, A, FakeClock().wall() + 10) == live[0]
        created = [e for e in store.audit(limit=100) if e.action == "create"]
        assert {(e.data["a"], e.data["b"]) for e in created} == {(A, B), (C, None), (C, D)}
        cdrs = CdrLog(store, node="n1")
        assert [(c.caller, c.callee) for c in cdrs.list()] == [(A, B)]
        assert [(c.caller, c.callee) for c in cdrs.calls_up()] == [(B, A)]
        events = [e for _, e in Outbox(store).peek(10)]
        assert [e.type for e in events] == ["ring", "cdr"]
        assert events[1].cdr is not None and events[1].cdr.caller == A
    finally:
        store.close()
