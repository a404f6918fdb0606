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
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Protocol

import lmdb

from sipmask.cdr.record import Cdr, iso
from sipmask.observability.logging import get_logger
from sipmask.store import codec
from sipmask.store.lmdb import LmdbStore
from sipmask.store.rules import Txn

EVENT_TYPES = ("ring", "answer", "hangup", "cdr")
EVENT_VERSION = 1

DB = "outbox"
STATE_DB = "outbox_state"
_SEQ = b"seq"
_SEQ_FORMAT = ">Q"
_STATE_FORMAT = ">Id"       # attempts (u32), next attempt at (wall seconds, f64)

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
    """Durable FIFO of events in the store's LMDB environment.

    Also the engine's EventSink (`call_event`). Listeners added with `on_enqueue` run after
    every commit; the webhook uses one to wake at once instead of polling.
    """

    def __init__(self, store: LmdbStore, max_events: int = 0) -> None:
        self.store = store
        self.max_events = max_events      # 0: no cap
        self.dropped = 0                  # events dropped by the cap since start
        self._dropped_logged = 0
        store.db(DB)
        store.db(STATE_DB)
        self._listeners: list[Callable[[], None]] = []

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
        for listener in self._listeners:
            listener()

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
        the `cdr` event, written in the same transaction."""
        def make(type_: str, record: Cdr | None = None) -> Event:
            return new_event(type_, call_id=call.call_id, binding_id=call.binding_id,
                             tenant=call.tenant, x=call.x, at=at, cdr=record)
        if kind == "cdr":
            self.enqueue(make("cdr", cdr))
        elif cdr is not None:
            self.enqueue_many((make(kind), make("cdr", cdr)))
        else:
            self.enqueue(make(kind))

    def peek(self, limit: int = 1) -> list[tuple[bytes, Event]]:
        """The oldest `limit` events, oldest first; they stay until acknowledged."""
        def run(txn: Txn) -> list[tuple[bytes, Event]]:
            out: list[tuple[bytes, Event]] = []
            for key, value in txn.scan(DB):
                if len(out) >= limit:
                    break
                out.append((bytes(key),
                            Event.decode(codec.open_json(self.store.keys, value))))
            return out
        return self.store.read(run)

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
        """Events not yet acknowledged (the DB's entry count: no scan)."""
        db = self.store.db(DB)
        try:
            with self.store.env.begin() as txn:
                return int(txn.stat(db)["entries"])
        except lmdb.MapResizedError:
            # Another process grew the map: adopt its size, as the store's own reads do.
            self.store.env.set_mapsize(0)
            with self.store.env.begin() as txn:
                return int(txn.stat(db)["entries"])
