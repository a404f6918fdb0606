"""Call events and the durable outbox that holds them until a receiver acknowledges them.

An event is written to LMDB in the call path with sync on commit, so once `enqueue` returns
it survives kill -9 (CONTRACT "Events": delivery is at least once, across restarts). It
leaves the outbox only when `ack` is called, which the webhook does after a 2xx.

Layout in the store's environment:
  outbox        seq (8 bytes, big-endian) -> the event's storage encoding, sealed with the
                store's key (a `cdr` event carries the record's real numbers; issue 14 §2);
                keys sort in enqueue order, and the DB's entry count is the backlog (O(1)).
  outbox_state  b"seq" -> the last sequence number handed out; it only grows, so a key is
                never reused, even after the outbox drains and the process restarts.
                seq -> attempts and next attempt time (wall seconds) of an event that
                failed, so backoff survives a restart.

The outbox is capped (`events.outbox_max`): a receiver that stays down must not fill the
disk the bindings and CDRs live on. Past the cap the oldest events are dropped, counted
(`dropped`, the `sipmask_events_dropped_total` metric) and logged; the CDRs themselves
stay in the store (`sipmask cdr export` recovers what the receiver missed).

On PostgreSQL (store/postgres.py) every node writes to one outbox and every node's webhook
delivers from it, each event by one node at a time:
  - `enqueue` takes keys from a sequence (int8send(nextval)), not from the `seq` counter,
    so nodes enqueue in parallel without a hot row.
  - `peek` claims the oldest unclaimed events (`FOR UPDATE SKIP LOCKED`, so two nodes
    never take the same one) for `lease_s`; a node's next peek renews its own claims. A
    node that dies holding claims stops renewing them, and once they lapse another node
    delivers those events: still at least once, across node crashes.
  - `call_event` (the engine, on the event loop) hands the events to the store's
    background writer instead of waiting for the commit; listeners hear of them from the
    event loop once committed. A process killed in that window (milliseconds) loses those
    events, not their CDRs: `sipmask cdr export` has every record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Protocol

import lmdb

from sipmask.cdr.record import Cdr, iso
from sipmask.clock import Clock, SystemClock
from sipmask.observability.logging import get_logger
from sipmask.store import codec
from sipmask.store.lmdb import LmdbStore
from sipmask.store.pg_schema import (
    OUTBOX_CLAIM,
    OUTBOX_ENQUEUE,
    OUTBOX_OLDEST,
    OUTBOX_ROW,
)
from sipmask.store.rules import Txn

if TYPE_CHECKING:
    from psycopg import Cursor

    from sipmask.store.lmdb import AnyStore

EVENT_TYPES = ("ring", "answer", "hangup", "cdr")
EVENT_VERSION = 1

DB = "outbox"
STATE_DB = "outbox_state"
_SEQ = b"seq"
_SEQ_FORMAT = ">Q"
_STATE_FORMAT = ">Id"       # attempts (u32), next attempt at (wall seconds, f64)
LEASE_S = 300.0             # PostgreSQL: how long a node's claim on an event holds
CLAIM_MAX = 16              # PostgreSQL: events one peek claims (short passes, short leases)

log = get_logger("sipmask.events")


@dataclass(frozen=True)
class Event:
    """One event as the receiver sees it (CONTRACT "Events")."""

    id: str                    # unique; receivers deduplicate on it
    type: str                  # ring | answer | hangup | cdr
    at: float                  # wall seconds; ISO-8601 UTC in JSON, like the CDR times
    call_id: str
    binding_id: str | None
    tenant: str
    x: str
    cdr: Cdr | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "type": self.type, "at": iso(self.at), "call_id": self.call_id,
            "binding_id": self.binding_id, "tenant": self.tenant, "x": self.x,
        }
        if self.cdr is not None:
            out["cdr"] = self.cdr.to_json()
        return out

    def body(self) -> bytes:
        """The bytes POSTed and signed. Deterministic, so every retry signs the same body."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()

    def encode(self) -> bytes:
        """Versioned storage encoding (times as numbers; the CDR as its own fields)."""
        data = asdict(self)
        data["v"] = EVENT_VERSION
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Event:
        raw = json.loads(data)
        raw.pop("v", None)
        cdr = raw.pop("cdr", None)
        known = {f.name for f in fields(cls)}
        event = cls(**{k: v for k, v in raw.items() if k in known})
        if cdr is None:
            return event
        cdr_known = {f.name for f in fields(Cdr)}
        return replace(event, cdr=Cdr(**{k: v for k, v in cdr.items() if k in cdr_known}))


def new_event(type: str, *, call_id: str, binding_id: str | None, tenant: str, x: str,
              at: float, cdr: Cdr | None = None) -> Event:
    """A new event with a fresh id. A `cdr` event carries its record; others do not."""
    if type not in EVENT_TYPES:
        raise ValueError(f"event type {type!r} is not one of {', '.join(EVENT_TYPES)}")
    if (type == "cdr") != (cdr is not None):
        raise ValueError("a cdr event needs its record, and only a cdr event has one")
    return Event(uuid.uuid4().hex, type, at, call_id, binding_id, tenant, x, cdr)


@dataclass(frozen=True)
class Attempts:
    """How often delivery of one event failed, and when to try it next (wall seconds)."""

    count: int = 0
    next_at: float = 0.0


class CallLike(Protocol):
    """What an event needs from a call (b2bua/call.py's Call fits)."""

    @property
    def call_id(self) -> str: ...
    @property
    def binding_id(self) -> str | None: ...
    @property
    def tenant(self) -> str: ...
    @property
    def x(self) -> str: ...


def _key(seq: int) -> bytes:
    return struct.pack(_SEQ_FORMAT, seq)


class Outbox:
    """Durable FIFO of events in the store (LMDB, or PostgreSQL shared by many nodes).

    Also the engine's EventSink (`call_event`). Listeners added with `on_enqueue` run after
    every commit; the webhook uses one to wake at once instead of polling.
    """

    def __init__(self, store: AnyStore, max_events: int = 0, *,
                 clock: Clock | None = None, lease_s: float = LEASE_S) -> None:
        self.store = store
        self.max_events = max_events      # 0: no cap
        self.dropped = 0                  # events dropped by the cap since start
        self.lost = 0                     # PostgreSQL: events whose deferred write failed
        self._dropped_logged = 0
        store.db(DB)
        store.db(STATE_DB)
        self._listeners: list[Callable[[], None]] = []
        self.clock: Clock = clock or SystemClock()
        self.lease_s = lease_s
        self.claimer = uuid.uuid4().hex   # this outbox's name on its claims (PostgreSQL)
        self._pending: list[Event] = []   # call events waiting for the background writer
        self._pending_lock = threading.Lock()
        self._flushing = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_enqueue(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def enqueue(self, event: Event) -> None:
        """Write one event; it is on disk when this returns."""
        self.enqueue_many((event,))

    def enqueue_many(self, events: Iterable[Event]) -> None:
        """Write several events in one transaction: one fsync, all or none."""
        batch = list(events)
        if not batch:
            return
        self._append(batch)
        for listener in self._listeners:
            listener()

    def _append(self, batch: list[Event]) -> None:
        if not batch:
            return
        if not isinstance(self.store, LmdbStore):
            self._pg_append(batch)
            return

        def run(txn: Txn) -> None:
            raw = txn.get(STATE_DB, _SEQ)
            seq = struct.unpack(_SEQ_FORMAT, raw)[0] if raw is not None else 0
            for event in batch:
                seq += 1
                txn.put(DB, _key(seq), codec.seal_json(self.store.keys, event.encode()))
            txn.put(STATE_DB, _SEQ, _key(seq))
        self.store.write(run)
        if self.max_events:
            over = self.backlog() - self.max_events
            if over > 0:
                self._drop_oldest(over)

    def _pg_append(self, batch: list[Event]) -> None:
        assert not isinstance(self.store, LmdbStore)
        keys = self.store.keys
        sealed = [codec.seal_json(keys, e.encode()) for e in batch]

        def run(cur: Cursor[Any]) -> tuple[int, int]:
            rows = ", ".join([OUTBOX_ROW] * len(batch))
            last = max(bytes(r[0]) for r in cur.execute(
                OUTBOX_ENQUEUE.format(rows=rows), sealed).fetchall())
            oldest = cur.execute(OUTBOX_OLDEST).fetchone()
            return (struct.unpack(_SEQ_FORMAT, bytes(oldest[0]))[0] if oldest else 0,
                    struct.unpack(_SEQ_FORMAT, last)[0])
        first, last = self.store.run_sql(run)
        # The span of keys bounds the backlog from above (acks leave gaps), so the exact
        # count, a scan on PostgreSQL, runs only when the span passes the cap.
        if self.max_events and last - first + 1 > self.max_events:
            over = self.backlog() - self.max_events
            if over > 0:
                self._drop_oldest(over)

    def _drop_oldest(self, count: int) -> None:
        """The cap (module docstring): the `count` oldest events go, with their attempts."""
        def run(txn: Txn) -> int:
            keys: list[bytes] = []
            for key, _value in txn.scan(DB):
                if len(keys) >= count:
                    break
                keys.append(bytes(key))
            for key in keys:
                txn.delete(DB, key)
                if txn.get(STATE_DB, key) is not None:
                    txn.delete(STATE_DB, key)
            return len(keys)
        dropped = self.store.write(run)
        self.dropped += dropped
        # Loud but not a line per event: the first drop, then at every tenfold.
        if self.dropped >= max(1, self._dropped_logged * 10):
            self._dropped_logged = self.dropped
            log.error("events.outbox_full", dropped=self.dropped, max_events=self.max_events,
                      hint="the webhook receiver is not acknowledging; the oldest "
                           "undelivered events are being dropped (CDRs are kept)")

    def call_event(self, kind: str, call: CallLike, at: float, cdr: Cdr | None = None) -> None:
        """EventSink for the engine. A hangup that carries the call's record also yields
        the `cdr` event, written in the same transaction. On PostgreSQL the write goes to
        the store's background writer (module docstring): the event loop never waits."""
        def make(type_: str, record: Cdr | None = None) -> Event:
            return new_event(type_, call_id=call.call_id, binding_id=call.binding_id,
                             tenant=call.tenant, x=call.x, at=at, cdr=record)
        if kind == "cdr":
            events = [make("cdr", cdr)]
        elif cdr is not None:
            events = [make(kind), make("cdr", cdr)]
        else:
            events = [make(kind)]
        if isinstance(self.store, LmdbStore):
            self.enqueue_many(events)
            return
        with contextlib.suppress(RuntimeError):   # no running loop: listeners run in place
            self._loop = asyncio.get_running_loop()
        with self._pending_lock:
            self._pending.extend(events)
            if self._flushing:
                return        # the writer takes these with its next batch
            self._flushing = True
        self.store.background.submit(self._flush)

    def _flush(self) -> None:
        """On the store's background writer: the pending call events, a batch per commit
        (those queued while one commits go together in the next)."""
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._flushing = False
                    return
            try:
                self._append(batch)
            except Exception:
                self.lost += len(batch)
                log.exception("events.enqueue_failed", events=len(batch))
                continue
            loop = self._loop
            for listener in self._listeners:
                if loop is None:
                    listener()
                else:
                    with contextlib.suppress(RuntimeError):   # the loop has closed
                        loop.call_soon_threadsafe(listener)

    def flush(self) -> None:
        """Wait until every call event handed to the background writer is committed."""
        if not isinstance(self.store, LmdbStore):
            self.store.background.submit(lambda: None).result()

    def peek(self, limit: int = 1) -> list[tuple[bytes, Event]]:
        """The oldest `limit` events, oldest first; they stay until acknowledged. On
        PostgreSQL: the oldest events no other node holds, claimed by this outbox for
        `lease_s` (at most CLAIM_MAX per peek)."""
        if not isinstance(self.store, LmdbStore):
            return self._pg_claim(limit)

        def run(txn: Txn) -> list[tuple[bytes, Event]]:
            out: list[tuple[bytes, Event]] = []
            for key, value in txn.scan(DB):
                if len(out) >= limit:
                    break
                out.append((bytes(key),
                            Event.decode(codec.open_json(self.store.keys, value))))
            return out
        return self.store.read(run)

    def _pg_claim(self, limit: int) -> list[tuple[bytes, Event]]:
        assert not isinstance(self.store, LmdbStore)
        now = self.clock.wall()
        params = {"me": self.claimer, "now": now, "until": now + self.lease_s,
                  "limit": max(1, min(limit, CLAIM_MAX))}

        def run(cur: Cursor[Any]) -> list[tuple[bytes, bytes]]:
            return [(bytes(k), bytes(v)) for k, v in cur.execute(OUTBOX_CLAIM, params)]
        # RETURNING has no order: oldest first is ours to restore.
        keys = self.store.keys
        return [(key, Event.decode(codec.open_json(keys, value)))
                for key, value in sorted(self.store.run_sql(run))]

    def ack(self, key: bytes) -> None:
        """The receiver has it: forget the event and its attempt record (sync commit)."""
        self.ack_many((key,))

    def ack_many(self, keys: Iterable[bytes]) -> None:
        """Forget several acknowledged events in one transaction (one fsync)."""
        def run(txn: Txn) -> None:
            for key in keys:
                if txn.get(DB, key) is not None:
                    txn.delete(DB, key)
                if txn.get(STATE_DB, key) is not None:
                    txn.delete(STATE_DB, key)
        self.store.write(run)

    def attempts(self, key: bytes) -> Attempts:
        raw = self.store.read(lambda txn: txn.get(STATE_DB, key))
        if raw is None:
            return Attempts()
        count, next_at = struct.unpack(_STATE_FORMAT, raw)
        return Attempts(count, next_at)

    def failed(self, key: bytes, next_at: float) -> Attempts:
        """Count one failed attempt and when to try next; durable, so a restart keeps the
        backoff. An event already acknowledged is left alone."""
        def run(txn: Txn) -> Attempts:
            if txn.get(DB, key) is None:
                return Attempts()
            raw = txn.get(STATE_DB, key)
            count = struct.unpack(_STATE_FORMAT, raw)[0] if raw is not None else 0
            state = Attempts(count + 1, next_at)
            txn.put(STATE_DB, key, struct.pack(_STATE_FORMAT, state.count, state.next_at))
            return state
        return self.store.write(run)

    def backlog(self) -> int:
        """Events not yet acknowledged (LMDB: the DB's entry count, no scan; PostgreSQL:
        count(*), which the outbox's cap asks only when the key span passes the cap)."""
        if not isinstance(self.store, LmdbStore):
            return self.store.count(DB)
        db = self.store.db(DB)
        try:
            with self.store.env.begin() as txn:
                return int(txn.stat(db)["entries"])
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size, as the store's own reads do.
            self.store.env.set_mapsize(0)
            with self.store.env.begin() as txn:
                return int(txn.stat(db)["entries"])
