"""CDRs, the answered-call journal and the events outbox on PostgreSQL, shared by nodes; and
the commands that bring a store there (`sipmask store migrate`, `sipmask store copy`).

Every test runs against a real server (tests/support/postgres.py), a fresh database each.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from sipmask.cdr.record import Cdr
from sipmask.cdr.store import STALE_S, CdrLog
from sipmask.clock import FakeClock
from sipmask.config import loader
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.events.outbox import CLAIM_MAX, Outbox, new_event
from sipmask.store import LmdbStore, codec, open_store
from sipmask.store.crypto import create_key_file
from sipmask.store.pg_schema import LATEST, SCHEMA, migrate
from sipmask.store.postgres import PostgresStore
from tests.support.paths import REPO
from tests.support.postgres import PgServer, pg_dsn, pg_key, pg_server

__all__ = ["pg_dsn", "pg_key", "pg_server"]   # fixtures

DAY = 86400.0
T0 = 1_800_000_000.0               # 2027-01-15T08:00:00Z
BASE = Cdr(call_id="c", tenant="demo", binding_id="b1", x="700100000000001",
           caller="13800000001", callee="13900000002", direction="a_to_b",
           invite_at=T0, ring_at=None, answer_at=None, end_at=T0 + 1, duration_s=0.0,
           release_side="callee", sip_status=486, unconnected_cause="callee_failed")


class _Call:
    call_id, binding_id, tenant, x = "call-1", "b1", "demo", "700100000000001"


@pytest.fixture
def nodes(pg_dsn: str, pg_key: Path) -> Iterator[Callable[[], PostgresStore]]:
    """Stores on one database, each with its own connections, as sipmask nodes have."""
    made: list[PostgresStore] = []

    def make() -> PostgresStore:
        made.append(PostgresStore(pg_dsn, FakeClock(), pool_size=3, call_workers=1,
                                  key_file=pg_key))
        return made[-1]
    yield make
    for s in made:
        s.close()


def partitions(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'cdrs'"))


# -- CDRs and the journal ------------------------------------------------------------------------
def test_cdrs_read_back_in_time_order_from_any_node(nodes: Callable[[], PostgresStore]) -> None:
    one, two = CdrLog(nodes(), node="n1"), CdrLog(nodes(), node="n2")
    for i, t in enumerate((30.0, 10.0, 20.0)):
        (one if i % 2 else two).write(replace(BASE, call_id=f"c{i}", invite_at=T0 + t))
    one.write_batch([(True, replace(BASE, call_id="other", tenant="acme", invite_at=T0 + 15))])
    assert [c.call_id for c in two.list()] == ["c1", "other", "c2", "c0"]
    assert [c.call_id for c in one.list(tenant="demo", since=T0 + 16)] == ["c2", "c0"]
    assert one.count() == 4


def test_a_live_node_keeps_its_calls_a_dead_ones_are_closed_by_a_peer(
        nodes: Callable[[], PostgresStore]) -> None:
    alive, dead, third = (CdrLog(nodes(), node=n) for n in ("alive", "dead", "third"))
    up = replace(BASE, answer_at=T0 + 2, end_at=None, sip_status=200,
                 unconnected_cause="none")
    alive.call_up(replace(up, call_id="a1"))
    dead.call_up(replace(up, call_id="d1"))
    alive.heartbeat(T0 + 50)
    dead.heartbeat(T0 + 40)
    assert {c.call_id for c in third.calls_up()} == {"a1", "d1"}
    fixed = third.repair(T0 + 40 + STALE_S, own=False)
    assert [(c.call_id, c.end_at, c.release_side) for c in fixed] == [("d1", T0 + 40,
                                                                       "sipmask")]
    assert [c.call_id for c in third.calls_up()] == ["a1"]
    assert [c.call_id for c in alive.list()] == ["d1"]


def test_retention_drops_whole_day_partitions(nodes: Callable[[], PostgresStore],
                                              pg_dsn: str) -> None:
    log = CdrLog(nodes())
    for day in range(4):
        for i in range(3):
            log.write(replace(BASE, call_id=f"d{day}-{i}", invite_at=T0 + day * DAY + i))
    assert partitions(pg_dsn) == ["cdrs_20270115", "cdrs_20270116", "cdrs_20270117",
                                  "cdrs_20270118"]
    assert [c.call_id for c in log.for_binding("b1")] == [
        f"d{d}-{i}" for d in range(4) for i in range(3)]
    # The cutoff falls inside the third day: days one and two go whole, the third stays,
    # and so do the CDR-by-binding index entries (trace) of the days that went.
    assert log.sweep(T0 + 2 * DAY + 1.5) == 6
    assert partitions(pg_dsn) == ["cdrs_20270117", "cdrs_20270118"]
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {SCHEMA}.cdr_binding").fetchone()
    assert row is not None and row[0] == 6
    assert [c.call_id for c in log.for_binding("b1")] == [
        f"d{d}-{i}" for d in (2, 3) for i in range(3)]
    assert [c.call_id for c in log.list()] == [f"d{d}-{i}" for d in (2, 3) for i in range(3)]
    assert log.sweep(T0 + 2 * DAY + 1.5) == 0
    # A record for a day whose partition is gone (a late repair) makes it again.
    log.write(replace(BASE, call_id="late", invite_at=T0))
    assert "cdrs_20270115" in partitions(pg_dsn) and log.count() == 7


def test_the_sweep_makes_the_next_days_partitions_ahead(nodes: Callable[[], PostgresStore],
                                                        pg_dsn: str) -> None:
    nodes().sweep(T0)
    assert partitions(pg_dsn) == ["cdrs_20270115", "cdrs_20270116", "cdrs_20270117",
                                  "cdrs_20270118"]


# -- the events outbox shared by nodes ------------------------------------------------------------
def ring(n: int) -> object:
    return new_event("ring", call_id=f"c{n}", binding_id="b", tenant="demo",
                     x="700100000000001", at=T0 + n)


def test_two_nodes_never_claim_the_same_event(nodes: Callable[[], PostgresStore]) -> None:
    clock = FakeClock(T0)
    one, two = Outbox(nodes(), clock=clock), Outbox(nodes(), clock=clock)
    one.enqueue_many([ring(i) for i in range(20)])       # type: ignore[misc]
    first = one.peek(64)
    second = two.peek(64)
    assert len(first) == CLAIM_MAX and len(second) == 20 - CLAIM_MAX
    assert not {k for k, _ in first} & {k for k, _ in second}
    assert [e.call_id for _, e in first] == [f"c{i}" for i in range(CLAIM_MAX)]  # oldest first
    assert one.peek(64) == first                        # a node's own claims come back to it
    assert two.peek(64) == second
    one.ack_many([k for k, _ in first])
    assert two.peek(64) == second and one.peek(64) == []
    assert one.backlog() == 20 - CLAIM_MAX


def test_a_dead_nodes_claims_lapse_and_another_node_delivers_them(
        nodes: Callable[[], PostgresStore]) -> None:
    clock = FakeClock(T0)
    doomed = nodes()
    one = Outbox(doomed, clock=clock, lease_s=30)
    two = Outbox(nodes(), clock=clock, lease_s=30)
    one.enqueue_many([ring(i) for i in range(3)])        # type: ignore[misc]
    taken = one.peek(10)
    assert len(taken) == 3
    one.failed(taken[0][0], clock.wall() + 5)           # a failed attempt, then the node dies
    doomed.close()
    assert two.peek(10) == []                          # still held by the dead node
    clock.advance(31)
    again = two.peek(10)
    assert again == taken                              # at least once: nothing is lost
    assert two.attempts(again[0][0]).count == 1        # and the backoff carries over


def test_events_enqueued_by_nodes_get_increasing_keys_and_the_cap_holds(
        nodes: Callable[[], PostgresStore]) -> None:
    one, two = Outbox(nodes(), max_events=5), Outbox(nodes(), max_events=5)
    for i in range(8):
        (one if i % 2 else two).enqueue(ring(i))         # type: ignore[arg-type]
    assert one.backlog() == 5 and one.dropped + two.dropped == 3
    assert [e.call_id for _, e in one.peek(10)] == [f"c{i}" for i in range(3, 8)]


def test_call_events_are_written_off_the_event_loop_and_heard_on_it(
        nodes: Callable[[], PostgresStore]) -> None:
    store = nodes()
    outbox = Outbox(store)

    async def main() -> list[str]:
        heard: list[str] = []
        outbox.on_enqueue(lambda: heard.append(
            "loop" if asyncio.get_running_loop() is loop else "elsewhere"))
        loop = asyncio.get_running_loop()
        outbox.call_event("ring", _Call(), T0)
        outbox.call_event("hangup", _Call(), T0 + 1, cdr=BASE)
        await asyncio.to_thread(outbox.flush)
        await asyncio.sleep(0)                          # the listeners' turn on the loop
        await asyncio.sleep(0)
        return heard
    heard = asyncio.run(main())
    assert heard and set(heard) == {"loop"}
    assert [e.type for _, e in outbox.peek(10)] == ["ring", "hangup", "cdr"]


# -- losing the server -----------------------------------------------------------------------------
def test_the_store_reconnects_after_the_server_restarts(nodes: Callable[[], PostgresStore],
                                                        pg_server: PgServer) -> None:
    # Every pooled connection breaks (the server ends them, as a dying primary does);
    # the next lookup and the next write run again on new connections.
    store = nodes()
    store.sync_tenants({"demo": TenantConfig("t", (NumberRange.parse(
        "700100000000000-700100000000009"),))})
    made = store.create(mode="axb", tenant="demo", a="13800000001", b="13900000002")
    pg_server.restart()
    assert store.route(made.x, "13800000001", time.time()) == made
    again = store.create(mode="axn", tenant="demo", a="13700000003")
    assert store.get(again.id) == again
    CdrLog(store).write(BASE)
    assert CdrLog(store).count() == 1


# -- migrate and copy -----------------------------------------------------------------------------
def _key_file(path: Path) -> Path:
    create_key_file(path)
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmask", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_store_migrate_reports_the_versions(pg_dsn: str, pg_key: Path,
                                            tmp_path: Path) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    sets = ("--set", "store.backend=postgres", "--set", f"store.dsn={pg_dsn}")
    keyed = (*sets, "--set", f"store.key_file={pg_key}")
    first = cli("store", "migrate", *keyed, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"backend": "postgres", "from": 0, "to": LATEST,
                                        "schema_version": codec.SCHEMA_VERSION}
    again = cli("store", "migrate", *keyed, cwd=tmp_path)
    assert json.loads(again.stdout) == {"backend": "postgres", "from": LATEST, "to": LATEST,
                                        "schema_version": codec.SCHEMA_VERSION}
    lmdb = cli("store", "migrate", "--set", f"store.path={tmp_path / 's'}", cwd=tmp_path)
    assert json.loads(lmdb.stdout) == {"backend": "lmdb",
                                       "schema_version": codec.SCHEMA_VERSION}


def test_postgres_without_its_key_file_is_refused_in_one_line(pg_dsn: str,
                                                               tmp_path: Path) -> None:
    sets = ("--set", "store.backend=postgres", "--set", f"store.dsn={pg_dsn}",
            "--set", f"store.key_file={tmp_path / 'none.key'}")
    for args in (("list",), ("store", "migrate"), ("serve",)):
        done = cli(*args, *sets, cwd=tmp_path)
        assert done.returncode != 0 and done.stdout == ""
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "store.key_file" in lines[0], done.stderr
        assert "none.key does not exist" in lines[0] and "never makes its key" in lines[0]
    assert not (tmp_path / "none.key").exists()              # and it made none


def test_copy_moves_an_lmdb_store_into_postgres_whole(pg_dsn: str, tmp_path: Path) -> None:
    key = tmp_path / "s.key"                              # the LMDB store makes it
    config = loader.loads(loader.default_text(), [f"store.path={tmp_path / 's'}",
                                                  f"store.key_file={key}"])
    source = open_store(config)
    assert isinstance(source, LmdbStore)
    made = [source.create(mode="axb", tenant="demo", a="13800000001", b=f"1390000000{i}")
            for i in range(3)]
    source.delete(made[2].id)
    log = CdrLog(source, node="n1")
    log.write(BASE)
    log.call_up(replace(BASE, call_id="up", answer_at=T0 + 2, end_at=None))
    outbox = Outbox(source)
    outbox.enqueue_many([ring(i) for i in range(3)])    # type: ignore[misc]
    outbox.ack(outbox.peek(1)[0][0])
    before = (source.list(), source.audit(limit=100), source.list_pools(), log.list(),
              log.calls_up(), [e for _, e in outbox.peek(10)])
    source.close()

    keyed = ("--set", f"store.path={tmp_path / 's'}", "--set", f"store.key_file={key}")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:   # a target sealed by another key
        PostgresStore(pg_dsn, pool_size=1, call_workers=1,
                      key_file=_key_file(tmp_path / "other.key")).close()
        refused = cli("store", "copy", "--to", pg_dsn, *keyed, cwd=tmp_path)
        assert refused.returncode == 1 and "does not match" in refused.stderr
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        migrate(conn)
    copied = cli("store", "copy", "--to", pg_dsn, *keyed, cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert report["copied"]["bindings"] == 2 and report["copied"]["outbox"] == 2
    assert "copy:" in copied.stderr and "records" in copied.stderr    # progress

    target = PostgresStore(pg_dsn, key_file=key)
    try:
        plog, pout = CdrLog(target, node="n1"), Outbox(target)
        after = (target.list(), target.audit(limit=100), target.list_pools(), plog.list(),
                 plog.calls_up(), [e for _, e in pout.peek(10)])
        assert after == before
        # Sealed records and hashed keys as they were: trace reads the history, and the
        # CDRs by binding, copied.
        traced = target.trace(made[2].x, made[2].created_at)
        assert [(h.binding, h.end_reason) for h in traced if h.binding.id == made[2].id] == [
            (made[2], "unbind")]
        assert plog.for_binding("b1") == [BASE]
        assert target.route(made[0].x, "13800000001", time.time()) == made[0]
        pout.enqueue(ring(9))                            # type: ignore[arg-type]
        assert [e.call_id for _, e in pout.peek(10)][-1] == "c9"    # sorts after the copy
        nxt = target.create(mode="axb", tenant="demo", a="13700000003", b="13600000004")
        assert target.audit(limit=1)[0].subject == nxt.id
        assert target.audit(limit=1)[0].seq == before[1][-1].seq + 1
    finally:
        target.close()
    again = cli("store", "copy", "--to", pg_dsn, *keyed, cwd=tmp_path)
    assert again.returncode == 1
    assert "already holds sipmask records" in again.stderr
    missing = cli("store", "copy", "--to", pg_dsn, "--set", f"store.path={tmp_path / 'no'}",
                  cwd=REPO)
    assert missing.returncode == 1 and "store.path" in missing.stderr


# -- trace and rekey on the command line ----------------------------------------------------------
def test_trace_and_store_rekey_on_postgres(pg_dsn: str, pg_key: Path, tmp_path: Path) -> None:
    sets = ("--set", "store.backend=postgres", "--set", f"store.dsn={pg_dsn}")

    def run(*args: str, key: Path = pg_key) -> subprocess.CompletedProcess[str]:
        return cli(*args, *sets, "--set", f"store.key_file={key}", cwd=tmp_path)
    made = json.loads(run("bind", "axb", "--a", "13800000001", "--b", "13900000002",
                          "--x", "700100000000001").stdout)
    assert run("unbind", made["id"]).returncode == 0
    traced = run("trace", "700100000000001", "--at", str(made["created_at_unix"]))
    assert traced.returncode == 0, traced.stderr
    [held] = json.loads(traced.stdout)["bindings"]
    assert (held["id"], held["a"], held["end_reason"]) == (made["id"], "13800000001", "unbind")

    new = tmp_path / "k2"
    done = run("store", "rekey", "--new-key", str(new))
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["rekeyed"] is True and answer["fingerprint"] != answer["was"]
    assert "store.key_file" in done.stderr and new.stat().st_mode & 0o777 == 0o600
    old = run("list")
    assert old.returncode == 1 and "does not match this store" in old.stderr
    after = run("trace", "700100000000001", "--at", str(made["created_at_unix"]), key=new)
    assert after.returncode == 0 and json.loads(after.stdout) == json.loads(traced.stdout)
    again = run("store", "rekey", "--new-key", str(new))      # store.key_file not moved yet
    assert again.returncode == 0 and json.loads(again.stdout)["rekeyed"] is False
    assert "already sealed with" in again.stderr
    assert not (tmp_path / "var").exists()      # no LMDB store was made on the way
