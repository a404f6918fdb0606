"""CDRs in LMDB: time-ordered, filtered by tenant and since; `sipmask cdr` prints them."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sipmask.cdr.record import Cdr
from sipmask.cdr.store import STALE_S, CdrLog
from sipmask.config import loader
from sipmask.errors import RefusedError
from sipmask.events.outbox import Outbox, new_event
from sipmask.store import open_store

BASE = Cdr(call_id="c", tenant="demo", binding_id="b1", x="700100000000001",
           caller="13800000001", callee="13900000002", direction="a_to_b",
           invite_at=1800000000.0, ring_at=None, answer_at=None, end_at=1800000001.0,
           duration_s=0.0, release_side="callee", sip_status=486,
           unconnected_cause="callee_failed")


def store_at(path: Path):  # type: ignore[no-untyped-def]
    return open_store(loader.loads(loader.default_text(), [f"store.path={path}"]))


def test_written_records_read_back_in_time_order(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    log = CdrLog(store)
    for i, t in enumerate((30.0, 10.0, 20.0)):
        log.write(replace(BASE, call_id=f"c{i}", invite_at=1800000000.0 + t))
    log.write(replace(BASE, call_id="other", tenant="other", invite_at=1800000015.0))
    assert [c.call_id for c in log.list()] == ["c1", "other", "c2", "c0"]
    assert [c.call_id for c in log.list(tenant="demo")] == ["c1", "c2", "c0"]
    assert [c.call_id for c in log.list(since=1800000016.0)] == ["c2", "c0"]
    assert [c.call_id for c in log.list(limit=2)] == ["c1", "other"]
    assert log.count() == 4
    store.close()
    reopened = store_at(tmp_path / "s")
    assert CdrLog(reopened).list()[0] == replace(BASE, call_id="c1", invite_at=1800000010.0)
    reopened.close()


def cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmask", "cdr", *args,
                           "--set", f"store.path={store}"], capture_output=True, text=True,
                          timeout=60)


def test_cli_masks_numbers_unless_the_tenant_asks(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    CdrLog(store).write(BASE)
    store.close()
    mine = cli(tmp_path / "s", "list", "--tenant", "demo")
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout)["caller"] == "13800000001"
    everyone = cli(tmp_path / "s", "list")
    assert "13800000001" not in everyone.stdout
    assert json.loads(everyone.stdout)["caller"] == "138****0001"
    exported = cli(tmp_path / "s", "export", "--format", "csv", "--tenant", "demo")
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert rows[0]["sip_status"] == "486" and rows[0]["ring_at"] == ""
    assert "exported 1 records" in exported.stderr


def test_cli_errors_name_the_field(tmp_path: Path) -> None:
    bad_time = cli(tmp_path / "s", "list", "--since", "yesterday")
    assert bad_time.returncode == 2 and "since:" in bad_time.stderr
    bad_tenant = cli(tmp_path / "s", "list", "--tenant", "nobody")
    assert bad_tenant.returncode == 1 and "tenant:" in bad_tenant.stderr


UP = replace(BASE, end_at=None, answer_at=1800000000.5, release_side=None, sip_status=200,
             unconnected_cause="none")


def test_nodes_sharing_a_store_repair_only_their_own_or_a_dead_peers_calls(
        tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    one, two = CdrLog(store, node="10.0.0.1:5060"), CdrLog(store, node="10.0.0.1:5062")
    t = 1800000010.0
    one.call_up(replace(UP, call_id="on-one"))
    two.call_up(replace(UP, call_id="on-two"))
    one.heartbeat(t)
    two.heartbeat(t)
    # Node two restarts: its predecessor's call is closed, node one's (alive) is not.
    fixed = two.repair(t + 1)
    assert [(c.call_id, c.end_at, c.release_side) for c in fixed] == [
        ("on-two", t, "sipmask")]
    assert [c.call_id for c in one.calls_up()] == ["on-one"]
    # Node one goes quiet; a periodic repair on node two closes its call once it is stale.
    two.heartbeat(t + 5)
    assert two.repair(t + 5, own=False) == []
    late = t + STALE_S + 0.5
    two.heartbeat(late)
    fixed = two.repair(late, own=False)
    assert [(c.call_id, c.end_at, c.duration_s) for c in fixed] == [
        ("on-one", t, round(t - UP.answer_at, 3))]
    assert one.calls_up() == [] and sorted(c.call_id for c in one.list()) == ["on-one", "on-two"]
    # A finished call leaves no journal entry behind for its node.
    two.call_up(replace(UP, call_id="done"))
    two.write(replace(UP, call_id="done", end_at=late, release_side="caller"))
    assert two.calls_up() == []
    store.close()


def test_a_named_node_repairs_calls_journalled_without_a_node(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    legacy = CdrLog(store)
    legacy.call_up(replace(UP, call_id="old"))
    legacy.heartbeat(1800000020.0)
    named = CdrLog(store, node="127.0.0.1:5060")
    assert named.repair(1800000021.0) == []                    # its writer may still be up
    fixed = named.repair(1800000020.0 + STALE_S, own=False)
    assert [(c.call_id, c.end_at) for c in fixed] == [("old", 1800000020.0)]
    store.close()


def test_list_bounds_since_and_limit(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    try:
        log = CdrLog(store)
        log.write(BASE)
        for since, limit, field in ((1e300, None, "since"), (float("inf"), None, "since"),
                                    (-1.0, None, "since"), (None, 0, "limit"),
                                    (None, 10 ** 400, "limit")):
            with pytest.raises(RefusedError) as exc:
                log.list(since=since, limit=limit)
            assert exc.value.field == field
        assert [c.call_id for c in log.list(since=0.0, limit=1)] == ["c"]
    finally:
        store.close()


def test_cli_since_and_limit_out_of_range_exit_1(tmp_path: Path) -> None:
    for args, field in ((("--since", "1e300"), "since"), (("--limit", "0"), "limit")):
        result = cli(tmp_path / "s", "list", *args)
        assert result.returncode == 1 and result.stderr.startswith(f"sipmask: {field}: "), \
            result.stderr


DAY = 86400.0


def test_sweep_deletes_old_records_in_bounded_batches(tmp_path: Path) -> None:
    """cdr.retention_days: records invited before the cutoff go, a batch per transaction;
    the journal of answered calls, events and bindings are not touched."""
    store = store_at(tmp_path / "s")
    try:
        log = CdrLog(store, node="n1")
        now = 1_800_000_000.0
        old = [replace(BASE, call_id=f"old{i}", invite_at=now - 200 * DAY + i)
               for i in range(5)]
        fresh = [replace(BASE, call_id=f"new{i}", invite_at=now - 10 * DAY + i)
                 for i in range(3)]
        edge = replace(BASE, call_id="edge", invite_at=now - 180 * DAY)   # kept: not older
        log.write_batch([(True, c) for c in (*old, *fresh, edge)])
        log.call_up(replace(UP, call_id="up-old", invite_at=now - 300 * DAY))
        outbox = Outbox(store)
        outbox.enqueue(new_event("ring", call_id="old0", binding_id=None, tenant="demo",
                                 x=BASE.x, at=now - 200 * DAY))
        made = store.create(mode="axb", tenant="demo", a="13800000001", b="13900000002",
                            ttl=0)
        cutoff = now - 180 * DAY
        assert log.sweep(cutoff, limit=2) == 2                # one bounded batch
        assert log.sweep(cutoff, limit=2) == 2
        assert log.sweep(cutoff, limit=2) == 1
        assert log.sweep(cutoff, limit=2) == 0                # nothing due: no write
        assert [c.call_id for c in log.list()] == ["edge", "new0", "new1", "new2"]
        assert [c.call_id for c in log.calls_up()] == ["up-old"]
        assert len(outbox.peek(10)) == 1
        assert store.get(made.id) == made
    finally:
        store.close()


def test_sweep_wants_a_batch_of_at_least_one(tmp_path: Path) -> None:
    store = store_at(tmp_path / "s")
    try:
        with pytest.raises(ValueError):
            CdrLog(store).sweep(1e9, limit=0)
    finally:
        store.close()


def test_a_bindings_calls_are_found_by_it_and_swept_with_their_index(tmp_path: Path) -> None:
    # trace (issue 14 §3) reads a binding's CDRs through the cdr_binding index; the sweep
    # takes the index entries with the records.
    store = store_at(tmp_path / "s")
    try:
        log = CdrLog(store)
        now = 1_800_000_000.0
        mine = [replace(BASE, call_id=f"m{i}", invite_at=now - i * DAY) for i in (3, 1, 2)]
        other = replace(BASE, call_id="o", binding_id="b2", invite_at=now)
        refused = replace(BASE, call_id="r", binding_id=None, invite_at=now)
        log.write_batch([(True, c) for c in (*mine, other, refused)])
        assert [c.call_id for c in log.for_binding("b1")] == ["m3", "m2", "m1"]
        assert [c.call_id for c in log.for_binding("b2")] == ["o"]
        assert log.for_binding("b") == [] and log.for_binding("b1", limit=1)[0].call_id == "m3"
        assert log.sweep(now - 1.5 * DAY) == 2
        assert [c.call_id for c in log.for_binding("b1")] == ["m1"]
        index = store.read(lambda txn: [k for k, _ in txn.scan("cdr_binding")])
        assert len(index) == 2                     # m1 and o; refused calls have no binding
    finally:
        store.close()
