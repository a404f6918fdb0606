"""The event outbox on a real LMDB store: FIFO order, ack, durable attempts, reopen, JSON."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from sipmask.cdr.record import Cdr
from sipmask.events.outbox import Attempts, Event, Outbox, new_event
from sipmask.store.lmdb import LmdbStore

X = "700100000000001"
CDR = Cdr(call_id="c1", tenant="demo", binding_id="b1", x=X, caller="13800000001",
          callee="13900000002", direction="a_to_b", invite_at=1800000000.0,
          ring_at=1800000000.5, answer_at=1800000001.0, end_at=1800000031.0, duration_s=30.0,
          release_side="caller", sip_status=200, unconnected_cause="none")


def ring(call_id: str = "c1", at: float = 1800000000.5) -> Event:
    return new_event("ring", call_id=call_id, binding_id="b1", tenant="demo", x=X, at=at)


@dataclass
class FakeCall:
    call_id: str = "c1"
    binding_id: str = "b1"
    tenant: str = "demo"
    x: str = X


def test_events_come_out_in_enqueue_order_and_leave_on_ack(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    events = [ring(f"c{i}") for i in range(300)]     # past 255: keys must sort as numbers
    for event in events:
        outbox.enqueue(event)
    assert outbox.backlog() == 300
    head = outbox.peek(3)
    assert [e for _, e in head] == events[:3]
    outbox.ack(head[1][0])                            # out of order ack is allowed
    assert [e.call_id for _, e in outbox.peek(3)] == ["c0", "c2", "c3"]
    assert outbox.backlog() == 299
    outbox.ack_many([key for key, _ in outbox.peek(2)])      # one commit for a batch
    assert [e.call_id for _, e in outbox.peek(1)] == ["c3"]
    for key, _ in outbox.peek(1000):
        outbox.ack(key)
    assert outbox.backlog() == 0 and outbox.peek(5) == []
    store.close()


def test_keys_are_never_reused_after_the_outbox_drains_and_reopens(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    outbox.enqueue(ring("first"))
    [(first_key, _)] = outbox.peek()
    outbox.ack(first_key)
    store.close()
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    outbox.enqueue(ring("second"))
    [(second_key, _)] = outbox.peek()
    assert second_key > first_key
    store.close()


def test_reopen_keeps_backlog_order_and_attempt_counts(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    for i in range(5):
        outbox.enqueue(ring(f"c{i}"))
    key = outbox.peek()[0][0]
    assert outbox.attempts(key) == Attempts(0, 0.0)
    outbox.failed(key, 1800000010.0)
    assert outbox.failed(key, 1800000030.0) == Attempts(2, 1800000030.0)
    store.close()

    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    assert outbox.backlog() == 5
    assert [e.call_id for _, e in outbox.peek(10)] == [f"c{i}" for i in range(5)]
    assert outbox.attempts(key) == Attempts(2, 1800000030.0)
    outbox.ack(key)
    assert outbox.attempts(key) == Attempts()            # the attempt record goes with it
    assert outbox.failed(key, 1.0) == Attempts()         # a late failure cannot revive it
    assert outbox.backlog() == 4
    store.close()


def test_enqueue_many_is_one_transaction_and_listeners_hear_each_commit(
        tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    heard: list[int] = []
    outbox.on_enqueue(lambda: heard.append(outbox.backlog()))
    outbox.enqueue_many([ring("a"), ring("b")])
    outbox.enqueue(ring("c"))
    outbox.enqueue_many([])
    assert heard == [2, 3]
    store.close()


def test_the_outbox_lives_beside_the_bindings_and_shares_their_store(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    store.sync_tenants({})
    outbox = Outbox(store)
    outbox.enqueue(ring())
    assert store.read(lambda txn: txn.get("outbox_state", b"seq")) is not None
    assert outbox.backlog() == 1
    store.close()


def test_storage_round_trip_keeps_every_field_and_the_cdr(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    cdr_event = new_event("cdr", call_id="c1", binding_id=None, tenant="demo", x=X,
                          at=1800000031.0, cdr=CDR)
    outbox.enqueue(cdr_event)
    [(_, back)] = outbox.peek()
    assert back == cdr_event and back.body() == cdr_event.body()
    store.close()


def test_json_has_the_contract_fields() -> None:
    event = ring()
    body = json.loads(event.body())
    assert body == {"id": event.id, "type": "ring", "at": "2027-01-15T08:00:00.500Z",
                    "call_id": "c1", "binding_id": "b1", "tenant": "demo", "x": X}
    cdr = json.loads(new_event("cdr", call_id="c1", binding_id="b1", tenant="demo", x=X,
                               at=1800000031.0, cdr=CDR).body())
    assert cdr["type"] == "cdr" and cdr["cdr"] == CDR.to_json()
    assert cdr["cdr"]["answer_at"] == "2027-01-15T08:00:01.000Z"


def test_ids_are_unique() -> None:
    assert len({ring().id for _ in range(1000)}) == 1000


def test_event_types_and_cdr_presence_are_checked() -> None:
    with pytest.raises(ValueError, match="not one of"):
        new_event("ringing", call_id="c", binding_id=None, tenant="t", x=X, at=0.0)
    with pytest.raises(ValueError, match="cdr"):
        new_event("cdr", call_id="c", binding_id=None, tenant="t", x=X, at=0.0)
    with pytest.raises(ValueError, match="cdr"):
        new_event("hangup", call_id="c", binding_id=None, tenant="t", x=X, at=0.0, cdr=CDR)


def test_call_event_sink_turns_a_hangup_with_its_record_into_hangup_and_cdr(
        tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store)
    call = FakeCall()
    outbox.call_event("ring", call, 1800000000.5)
    outbox.call_event("answer", call, 1800000001.0)
    outbox.call_event("hangup", call, 1800000031.0, CDR)
    events = [e for _, e in outbox.peek(10)]
    assert [e.type for e in events] == ["ring", "answer", "hangup", "cdr"]
    assert events[2].cdr is None and events[3].cdr == CDR
    assert {e.call_id for e in events} == {"c1"} and len({e.id for e in events}) == 4
    store.close()


def test_the_cap_drops_the_oldest_events_and_their_attempts(tmp_path: Path) -> None:
    """A receiver that stays down must not fill the disk: past max_events the oldest go,
    counted, and the newest are kept in order."""
    store = LmdbStore(tmp_path / "s")
    outbox = Outbox(store, max_events=5)
    for i in range(4):
        outbox.enqueue(ring(f"c{i}"))
    first_key = outbox.peek(1)[0][0]
    outbox.failed(first_key, 1800000100.0)           # c0 had a failed attempt
    assert outbox.dropped == 0 and outbox.backlog() == 4
    outbox.enqueue_many([ring(f"c{i}") for i in range(4, 8)])
    assert outbox.backlog() == 5 and outbox.dropped == 3
    assert [e.call_id for _, e in outbox.peek(10)] == ["c3", "c4", "c5", "c6", "c7"]
    assert outbox.attempts(first_key) == Attempts()   # its attempt record went with it
    outbox.enqueue(ring("c8"))
    assert outbox.dropped == 4 and outbox.peek(1)[0][1].call_id == "c4"
    store.close()
    unbounded = Outbox(LmdbStore(tmp_path / "u"))     # 0: no cap
    for i in range(20):
        unbounded.enqueue(ring(f"c{i}"))
    assert unbounded.backlog() == 20 and unbounded.dropped == 0
    unbounded.store.close()
