"""CDRs in the store's LMDB environment: written with sync on commit, read by time.

Keys are the invite time in microseconds (big-endian, so keys sort by time) followed by the
call id, so `since` is one cursor seek. The write happens in the call path before the call's
last response leaves (CONTRACT), so an acknowledged call always has its record.

Crash safety: when a call is answered its record so far goes into `calls_up` (before the 200
reaches the caller); the final CDR replaces it in one transaction. A process killed with
calls up leaves them there, and the next start closes each one (`repair`): end_at is the last
heartbeat the dead process wrote (at most `HEARTBEAT_S` late), release_side is sipmask.

Real numbers are sealed (issue 14 §2): a CDR's and a journal entry's JSON is sealed whole
with the store's key (codec.seal_json); a CDR's binding id is its clear header, and the
`cdr_binding` index (binding id, then the CDR's key) finds a binding's calls for `trace`.

Several nodes may share one store (several `sipmask serve` processes behind a dispatcher,
README "Scaling past one core"). Each journals under its own node name (`sip.node_id`) and
heartbeats under it, so a node starting up repairs its own predecessor's calls and those of
nodes whose heartbeat is older than `STALE_S`, never a live peer's. Running nodes also
close a dead peer's calls every `STALE_S`. Entries without a node (written before nodes
existed, or by a CdrLog opened without one) belong to the unnamed node.

On PostgreSQL (store/postgres.py) the same records go through the same `Txn`: `cdrs` is a
table partitioned by day (store/pg_schema.py), so retention drops whole day partitions
instead of deleting rows, and the journal and heartbeats are rows every node sees.
"""

from __future__ import annotations

import builtins
import struct
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from sipmask.cdr.record import Cdr
from sipmask.store import codec, rules
from sipmask.store.lmdb import LmdbStore
from sipmask.store.rules import Txn

if TYPE_CHECKING:
    from sipmask.store.lmdb import AnyStore

DB = "cdrs"
UP = "calls_up"
BY_BINDING = "cdr_binding"
HEARTBEAT = b"\x00heartbeat"     # sorts before every call id; + b"\x00" + node per node
HEARTBEAT_S = 1.0
STALE_S = 10.0                  # a node whose heartbeat is this old is dead
NODE_SEP = b"\x1f"             # node name, separator, call id (sipmask's ids have none)


class CdrSink(Protocol):
    # True when writes wait for the disk: cdr/group.py then commits on a writer thread.
    blocking: bool

    def write(self, cdr: Cdr) -> None: ...
    def call_up(self, cdr: Cdr) -> None: ...
    def write_batch(self, ops: Sequence[tuple[bool, Cdr]]) -> None:
        """(final, record) pairs in order, in one commit: final records as `write`,
        the others as `call_up`."""


def _beat_key(node: bytes) -> bytes:
    """A node's heartbeat key; the unnamed node keeps the key from before nodes existed."""
    return HEARTBEAT + (b"\x00" + node if node else b"")


def _key(cdr: Cdr) -> bytes:
    return struct.pack(">Q", max(0, int(cdr.invite_at * 1_000_000))) + cdr.call_id.encode()


def _since_key(since: float | None) -> bytes:
    return b"" if since is None else struct.pack(">Q", max(0, int(since * 1_000_000)))


class CdrLog:
    """CDRs kept in the bindings store (LMDB: one fsync per commit; PostgreSQL: one
    commit round trip)."""

    blocking = True

    def __init__(self, store: AnyStore, node: str = "") -> None:
        self.store = store
        self.node = node.encode()
        store.db(DB)
        store.db(UP)
        store.db(BY_BINDING)

    def _seal(self, cdr: Cdr) -> bytes:
        return codec.seal_json(self.store.keys, cdr.encode(),
                               (cdr.binding_id or "").encode())

    def _open(self, raw: bytes) -> Cdr:
        return Cdr.decode(codec.open_json(self.store.keys, raw))

    def _rows(self, cdr: Cdr) -> Iterator[tuple[str, bytes, bytes]]:
        """A final CDR's rows: the record, and its index entry (trace finds a binding's
        calls by it)."""
        key = _key(cdr)
        yield DB, key, self._seal(cdr)
        if cdr.binding_id:
            yield BY_BINDING, codec.cdr_index_key(cdr.binding_id, key), b""

    def _up_key(self, call_id: str) -> bytes:
        return self.node + NODE_SEP + call_id.encode() if self.node else call_id.encode()

    def write(self, cdr: Cdr) -> None:
        self.write_batch(((True, cdr),))

    def call_up(self, cdr: Cdr) -> None:
        """Journal an answered call (its record without an end) until its CDR is written."""
        self.write_batch(((False, cdr),))

    def write_batch(self, ops: Sequence[tuple[bool, Cdr]]) -> None:
        """Many records in one transaction: one fsync for all (cdr/group.py's group commit).
        Each table's rows go in one put_rows and the journal entries the final records
        close in one delete_many, asking nothing back: on PostgreSQL the whole batch is a
        few statements in one round trip (a `get` of each journal entry before deleting it
        was a round trip per record). The journal's puts go before its deletes, so a call
        answered and ended within one batch leaves no entry."""
        self.store.write(self._batch(ops))

    def write_batch_on_loop(self, ops: Sequence[tuple[bool, Cdr]]) -> Awaitable[None] | None:
        """`write_batch` committed on the running event loop, where the store can
        (PostgreSQL: store.write_on_loop); None where it cannot, or not now: then
        `write_batch` on the writer thread."""
        on_loop = getattr(self.store, "write_on_loop", None)
        return None if on_loop is None else on_loop(self._batch(ops))

    def _batch(self, ops: Sequence[tuple[bool, Cdr]]) -> Callable[[Txn], None]:
        rows: dict[str, dict[bytes, bytes]] = {UP: {}, DB: {}, BY_BINDING: {}}
        closed: list[bytes] = []
        for final, cdr in ops:
            up_key = self._up_key(cdr.call_id)
            if not final:
                rows[UP][up_key] = self._seal(cdr)
                continue
            for db, key, value in self._rows(cdr):
                rows[db][key] = value
            closed.append(up_key)

        def run(txn: Txn) -> None:
            for db, items in rows.items():
                if items:
                    txn.put_rows(db, sorted(items.items()))
            if closed:
                txn.delete_many(UP, closed)
        return run

    def heartbeat(self, now: float) -> None:
        self.store.write(lambda txn: txn.put(UP, _beat_key(self.node), struct.pack(">d", now)))

    def calls_up(self) -> list[Cdr]:
        """Every node's journalled calls."""
        return self.store.read(lambda txn: [self._open(v) for k, v in txn.scan(UP)
                                            if not k.startswith(HEARTBEAT)])

    def repair(self, now: float, *, own: bool = True) -> list[Cdr]:
        """Close the calls a killed process left up; returns the CDRs written for them.
        `own`: this node's too (at start-up: its predecessor is dead); otherwise only those
        of nodes whose heartbeat is older than STALE_S (or that never wrote one)."""
        def run(txn: Txn) -> list[Cdr]:
            beats: dict[bytes, float] = {}
            entries: list[tuple[bytes, bytes, bytes]] = []
            for key, value in txn.scan(UP):
                if key.startswith(HEARTBEAT):
                    beats[key[len(HEARTBEAT) + 1:]] = struct.unpack(">d", value)[0]
                else:
                    node = key.partition(NODE_SEP)[0] if NODE_SEP in key else b""
                    entries.append((key, node, value))
            dead = {node for node, at in beats.items() if now - at >= STALE_S}
            fixed: list[Cdr] = []
            for key, node, value in entries:
                if node == self.node:
                    if not own:
                        continue
                elif node in beats and node not in dead:
                    continue                    # a live peer's call
                up = self._open(value)
                last = beats.get(node, now)
                end = max(min(last, now), up.answer_at or up.invite_at)
                start = up.answer_at if up.answer_at is not None else end
                record = replace(up, end_at=end, duration_s=round(end - start, 3),
                                 release_side="sipmask")
                for db, row_key, row in self._rows(record):
                    txn.put(db, row_key, row)
                txn.delete(UP, key)
                fixed.append(record)
            for node in dead - {self.node}:     # its calls are closed: forget the node
                txn.delete(UP, _beat_key(node))
            return fixed
        return self.store.write(run)

    def list(self, since: float | None = None, tenant: str | None = None,
             limit: int | None = None) -> list[Cdr]:
        """Oldest first from `since`; RefusedError (since, limit) for a value out of range."""
        if since is not None:
            rules.moment("since", since)
        rules.row_limit(limit)

        def run(txn: Txn) -> list[Cdr]:
            out: list[Cdr] = []
            for _key, value in txn.scan(DB, _since_key(since)):
                cdr = self._open(value)
                if tenant is not None and cdr.tenant != tenant:
                    continue
                out.append(cdr)
                if limit is not None and len(out) >= limit:
                    break
            return out
        return self.store.read(run)

    def sweep(self, before: float, limit: int = 1000) -> int:
        """Delete up to `limit` records invited before `before` (cdr.retention_days);
        returns how many. One bounded transaction per call, so the writer lock is never held
        for a whole backlog: the caller repeats while a full batch went. Nothing due: no
        write transaction (no fsync). The answered-call journal is another database and
        is never swept here (repair closes those calls).

        PostgreSQL: the day partitions wholly before `before` are dropped (whole days, so
        a record may outlive its cutoff by up to a day); `limit` does not apply, and the
        count returned is the records dropped."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if not isinstance(self.store, LmdbStore):
            return self.store.drop_days_before(before)
        cutoff = _since_key(max(0.0, before))

        def due(txn: Txn) -> list[tuple[bytes, bytes]]:
            rows: list[tuple[bytes, bytes]] = []
            for key, value in txn.scan(DB):
                if len(rows) >= limit or key >= cutoff:
                    break
                rows.append((key, codec.sealed_clear(value)))
            return rows
        if not self.store.read(due):
            return 0

        def run(txn: Txn) -> int:
            rows = due(txn)
            for key, binding_id in rows:
                txn.delete(DB, key)
                if binding_id:
                    txn.delete(BY_BINDING, codec.cdr_index_key(binding_id.decode(), key))
            return len(rows)
        return self.store.write(run)

    def for_binding(self, binding_id: str,
                    limit: int | None = None) -> builtins.list[Cdr]:
        """A binding's calls, oldest first (trace; real numbers in them: operator use)."""
        rules.row_limit(limit)
        prefix = codec.cdr_index_prefix(binding_id)

        def run(txn: Txn) -> builtins.list[Cdr]:
            out: builtins.list[Cdr] = []
            for key, _ in txn.scan(BY_BINDING, prefix):
                if not key.startswith(prefix) or (limit is not None and len(out) >= limit):
                    break
                raw = txn.get(DB, key[len(prefix):])
                if raw is not None:
                    out.append(self._open(raw))
            return out
        return self.store.read(run)

    def count(self) -> int:
        if not isinstance(self.store, LmdbStore):
            return self.store.count(DB)
        with self.store.env.begin() as txn:
            return int(txn.stat(self.store.db(DB))["entries"])


class MemoryCdrLog:
    """For unit tests of the engine: the same interface, in a list."""

    blocking = False

    def __init__(self) -> None:
        self.records: list[Cdr] = []
        self.up: dict[str, Cdr] = {}

    def write(self, cdr: Cdr) -> None:
        self.records.append(cdr)
        self.up.pop(cdr.call_id, None)

    def call_up(self, cdr: Cdr) -> None:
        self.up[cdr.call_id] = cdr

    def write_batch(self, ops: Sequence[tuple[bool, Cdr]]) -> None:
        for final, cdr in ops:
            if final:
                self.write(cdr)
            else:
                self.call_up(cdr)

    def __iter__(self) -> Iterator[Cdr]:
        return iter(self.records)
