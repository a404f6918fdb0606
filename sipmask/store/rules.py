"""The binding rules, written once over a small key-value transaction.

LMDB (store/lmdb.py) and the in-memory store (store/memory.py) differ only in how they
give a `Txn` and run a function in it; every rule below holds for both, and the unit tests
run one suite against each. Records are sealed with the store's Keyring (store/crypto.py):
every rule reads and writes through codec.py with `work.keys`, never a number in a key.

Named databases (keys → values; codec.py has the encodings):
    meta      b"schema_version" → b"2"; b"audit_seq" → u64; b"key_id" → key fingerprint;
              b"key_generation" → generation byte (store/reseal.py)
    bindings  id → binding (real numbers sealed)
    route     x + HMAC(x, number) → binding (AXB: one key per party; AXE: A's; AXYB: A's
              on X and B's on Y, y + HMAC(y, B)); x alone → AXN binding; x + "#" + E →
              the AXE binding with extension E. The call path is one read: the dialled
              number and the caller's keyed hash (or the extension) make the key, the
              value is the record.
    expiry    u64 ms + id → b""              (the sweep walks it in time order)
    xuse      x → kind flag + count          (AXN takes X whole, AXE shares it by
                                             extension, AXB/AXYB pairs by caller; least-used
                                             allocation; pools). An AXYB Y counts as used.
    pools     first → pool range             (ranges never overlap, across all tenants)
    tenants   name → {"source": …}
    audit     u64 µs + u64 seq → entry       (append-only; its data sealed)
    history   x + u64 created ms + id → a removed binding, who removed it and when (trace);
              an AXYB binding has a second record under its Y
    history_end  u64 ms + history key → b""  (the history sweep: cdr.retention_days)
    cdrs, calls_up, cdr_binding, outbox, outbox_state: cdr/store.py, events/outbox.py
"""

from __future__ import annotations

import builtins
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol, TypeVar

from sipmask import numbers
from sipmask.clock import Clock, SystemClock
from sipmask.config.schema import (
    DEFAULT_EXT_DIGITS,
    MAX_EXT_DIGITS,
    NumberPrefix,
    NumberRange,
    TenantConfig,
)
from sipmask.errors import (
    ConfigError,
    ConflictError,
    PoolExhausted,
    RecordNotFound,
    RefusedError,
    StoreError,
)
from sipmask.store import codec
from sipmask.store.base import (
    ACTORS,
    DEFAULT_TTL,
    MODES,
    PAIR_MODES,
    AuditEntry,
    Binding,
    BindingRequest,
    HeldBinding,
    ImportOutcome,
    PoolRange,
    PoolUsage,
)
from sipmask.store.crypto import Keyring

T = TypeVar("T")
_is_real = numbers.is_real
_is_x = numbers.is_x

DATABASES = ("meta", "bindings", "route", "expiry", "xuse", "pools", "tenants", "audit",
             "history", "history_end", "cdrs", "calls_up", "cdr_binding", "outbox",
             "outbox_state")
# Every number the API, the CLI and an import take has its range here (issue 12: an
# unbounded max_duration_s of 10**400 was stored, then overflowed float() on the call path).
MAX_TTL = 10 * 365 * 86400       # ten years: anything longer is a typo, not a policy
MAX_CALL_S = 7 * 86400           # a binding's max_duration_s: a week (0: no limit)
MAX_CONCURRENT = 100_000         # a binding's max_concurrent (0: no cap)
MAX_ROWS = 1_000_000             # records one list, audit or CDR query returns
MAX_TIME = 253_402_300_799.0     # 9999-12-31T23:59:59Z, the latest time a query may name
_RANDOM_PROBES = 8               # least-used of this many random Xs before a full walk
_ROUTE_SCAN = 16                 # expired keys route() steps over before giving up on X
_RETRIES_ON_CLASH = 4            # a batch made again after an id clash (see KeyExists)

Callers = tuple[tuple[str, str], ...]   # (field, number) pairs a binding keys on a number


class KeyExists(StoreError):
    """Txn.insert_rows met a key already there; the whole transaction is undone. For a
    batch of new bindings this is an id clash (52 random bits per ms: all but never): the
    batch is made again with fresh ids."""


class Txn(Protocol):
    def get(self, db: str, key: bytes) -> bytes | None: ...
    def get_later(self, db: str, key: bytes) -> Callable[[], bytes | None]:
        """`get`, asked now and answered when the function returned is called. On
        PostgreSQL the statement goes at once and its answer comes back with that of the
        next statement the transaction waits for (pipeline mode), so reads named ahead
        of one that must wait cost no round trip of their own."""
        ...
    def get_many(self, db: str, keys: builtins.list[bytes]) -> dict[bytes, bytes]:
        """The values of those `keys` that are there (one statement on PostgreSQL, where
        each `get` is a round trip; a loop on LMDB)."""
        ...
    def put(self, db: str, key: bytes, value: bytes) -> None: ...
    def delete(self, db: str, key: bytes) -> None: ...
    def delete_many(self, db: str, keys: builtins.list[bytes]) -> None:
        """Delete those `keys` that are there and ask nothing back (one statement on
        PostgreSQL, sent without waiting for its answer)."""
        ...
    def insert(self, db: str, key: bytes, value: bytes) -> bool:
        """Put only if the key is absent; False (and no write) if it is there."""
        ...
    def scan(self, db: str, start: bytes = b"",
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Forward from the first key >= start, or backward from the last key."""
        ...
    def put_many(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> int:
        """Put sorted (key, value) pairs, overwriting; returns how many keys were new."""
        ...
    def put_rows(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> None:
        """Put sorted (key, value) pairs, overwriting, and ask nothing back: where each
        answer is a round trip (PostgreSQL), they go without waiting for one."""
        ...
    def insert_rows(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> None:
        """Put sorted (key, value) pairs whose keys must be new, asking nothing back: a
        key already there undoes the whole transaction with KeyExists, raised here on
        LMDB and in memory, on PostgreSQL by the next statement that waits for the
        server or by the COMMIT."""
        ...


def _refuse_number(field: str, raw: object, normalise: Callable[[str], str]) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise RefusedError(field, "required")
    try:
        return normalise(raw)
    except numbers.NumberError as exc:
        raise RefusedError(field, str(exc)) from None


def _national(raw: object, normalise: Callable[[str], str]) -> str | None:
    """`raw` normalised, or None when it is not a number (the rules will refuse it)."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    try:
        return normalise(raw)
    except numbers.NumberError:
        return None


def whole(field: str, raw: object, lo: int, hi: int, says: str | None = None) -> int:
    """`raw` as a whole number from lo to hi, else RefusedError naming the field and the
    range, never the value. `says` words the range (default "lo..hi")."""
    says = says or f"{lo}..{hi}"
    # bool is an int subclass in Python; true is not a number of anything.
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise RefusedError(field, f"must be a whole number: {says}")
    if not lo <= raw <= hi:
        raise RefusedError(field, f"must be {says}")
    return raw


def moment(field: str, raw: float) -> float:
    """A time a query names (Unix seconds, as times.parse_time gives it), from 1970 to
    9999; NaN and the infinities fail the same test."""
    if not 0.0 <= raw <= MAX_TIME:
        raise RefusedError(field, f"must be a time from 1970 to 9999 "
                                  f"(0..{MAX_TIME:.0f} Unix seconds)")
    return raw


def row_limit(limit: int | None) -> int | None:
    """How many records one query may return (None: all there are)."""
    return None if limit is None else whole("limit", limit, 1, MAX_ROWS)


def _ttl(raw: object) -> int:
    return whole("ttl", raw, 0, MAX_TTL, f"0 (no expiry) or 1..{MAX_TTL} seconds")


def _policy_fields(req: BindingRequest) -> dict[str, object]:
    """The binding's optional policy rules (policy/), checked; only those set are returned."""
    out: dict[str, object] = {}
    if (req.direction == "both" and req.max_duration_s is None and req.max_concurrent is None
            and not req.blacklist):
        return out   # no rule set: the common case, and every import line asks
    if req.direction != "both":
        if req.direction not in ("a_to_b", "b_to_a"):
            raise RefusedError("direction", "must be one of both, a_to_b, b_to_a")
        if req.mode not in PAIR_MODES:
            raise RefusedError("direction", "only an AXB or AXYB binding has two directions")
        out["direction"] = req.direction
    for name, most in (("max_duration_s", MAX_CALL_S), ("max_concurrent", MAX_CONCURRENT)):
        value = getattr(req, name)
        if value is not None:
            out[name] = whole(name, value, 0, most, f"0 (no limit) or 1..{most}")
    if req.blacklist:
        try:
            out["blacklist"] = tuple(sorted({NumberPrefix.parse(str(e)).digits
                                             for e in req.blacklist}))
        except ValueError as exc:
            raise RefusedError("blacklist", str(exc)) from None
    return out


def parse_range(pool: str | NumberRange) -> NumberRange:
    if isinstance(pool, NumberRange):
        return pool
    try:
        return NumberRange.parse(pool)
    except ValueError as exc:
        raise RefusedError("range", str(exc)) from None


def _creator(txn: Txn, b: Binding, keys: Keyring) -> str | None:
    """Who created b: its "create" audit entry, written in the same transaction with the
    binding's created_at as its time (so one seek finds it; a bulk import shares a time
    with the rest of its batch, whose entries are read by their clear header only)."""
    start = codec.audit_key(b.created_at, 0)
    for key, raw in txn.scan("audit", start):
        if key[:8] != start[:8]:
            break
        head = codec.audit_head(raw)
        if head.subject == b.id and head.action == "create":
            return head.actor
    return None


def _kind(mode: str) -> str:
    """What a number's use records of a mode: AXN and AXE keep a number to their own kind,
    AXB and AXYB pairs share one (codec.encode_use)."""
    return mode if mode in ("axn", "axe") else "axb"


def _callers_on(mode: str, a: str, b: str | None) -> Callers:
    """The callers a new binding keys on its X (its Y takes B alone, for AXYB)."""
    if mode == "axb":
        return (("a", a), ("b", str(b)))
    if mode in ("axe", "axyb"):
        return (("a", a),)
    return ()


def _ext_digits(field: str, raw: object, digits: int, tenant: str) -> str:
    """An extension as given: exactly the tenant's ext_digits ASCII digits."""
    if not isinstance(raw, str) or not raw.strip():
        raise RefusedError(field, "required")
    ext = raw.strip()
    if not (ext.isascii() and ext.isdigit() and len(ext) == digits):
        raise RefusedError(field, f"must be {digits} digits (tenants.{tenant}.ext_digits)")
    return ext


def _what(b: Binding) -> str:
    """What an audit entry keeps of a binding, as JSON: enough to say what it was, and small."""
    return codec.binding_summary(b)


_X_BYTES = numbers.X_LENGTH


class _Routes:
    """The rules' Txn: everything passes through to the store's, and what this transaction
    read or wrote of the route index is remembered, so the keys a check will read can be
    fetched together first (`fetch`: one Txn.get_many) and every later read of them is
    answered here. Every write of the transaction goes through this Txn, so what it
    remembers cannot go stale (the rules lock, or LMDB's one writer, keeps other writers
    out meanwhile).

    An X without a use has no route key at all: `xuse` counts every binding that holds X,
    and every route key of a binding starts with a number it holds (codec.route_keys).
    `bare(x)`, told when the rules read that X has no use, lets a read on X be answered
    from what this transaction has written there since, without asking the store."""

    __slots__ = ("_bare", "_seen", "txn")

    def __init__(self, txn: Txn) -> None:
        self.txn = txn
        self._seen: dict[bytes, bytes | None] = {}
        self._bare: set[bytes] = set()

    def bare(self, x: str) -> None:
        self._bare.add(x.encode())

    def fetch(self, keys: Iterable[bytes]) -> None:
        """Read, in one statement, the route keys not known here yet."""
        seen, bare = self._seen, self._bare
        wanted = sorted({k for k in keys if k not in seen and k[:_X_BYTES] not in bare})
        if wanted:
            found = self.txn.get_many("route", wanted)
            for key in wanted:
                seen[key] = found.get(key)

    def get(self, db: str, key: bytes) -> bytes | None:
        if db != "route":
            return self.txn.get(db, key)
        seen = self._seen
        if key in seen:
            return seen[key]
        if key[:_X_BYTES] in self._bare:
            return None
        raw = seen[key] = self.txn.get(db, key)
        return raw

    def get_many(self, db: str, keys: builtins.list[bytes]) -> dict[bytes, bytes]:
        if db != "route":
            return self.txn.get_many(db, keys)
        self.fetch(keys)
        return {key: raw for key in keys if (raw := self.get(db, key)) is not None}

    def get_later(self, db: str, key: bytes) -> Callable[[], bytes | None]:
        if db == "route":        # what this transaction knows of a route key counts
            return lambda: self.get(db, key)
        return self.txn.get_later(db, key)

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.txn.put(db, key, value)
        if db == "route":
            self._seen[key] = value

    def insert(self, db: str, key: bytes, value: bytes) -> bool:
        added = self.txn.insert(db, key, value)
        if db == "route":
            self._seen.pop(key, None)    # added or not, the next read asks the store
        return added

    def delete(self, db: str, key: bytes) -> None:
        self.txn.delete(db, key)
        if db == "route":
            self._seen[key] = None

    def delete_many(self, db: str, keys: builtins.list[bytes]) -> None:
        self.txn.delete_many(db, keys)
        if db == "route":
            self._seen.update(dict.fromkeys(keys))

    def put_many(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> int:
        added = self.txn.put_many(db, items)
        if db == "route":
            self._seen.update(items)
        return added

    def put_rows(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> None:
        self.txn.put_rows(db, items)
        if db == "route":
            self._seen.update(items)

    def insert_rows(self, db: str, items: builtins.list[tuple[bytes, bytes]]) -> None:
        self.txn.insert_rows(db, items)
        if db == "route":
            self._seen.update(items)

    def scan(self, db: str, start: bytes = b"",
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        return self.txn.scan(db, start, reverse)


class _Work:
    """One write transaction's worth of rule checks and writes, with its audit sequence."""

    def __init__(self, txn: Txn, now: float, actor: str, keys: Keyring) -> None:
        self.txn = _Routes(txn)
        self.now = now
        self.actor = actor
        self.keys = keys
        self._seq: int | None = None
        self._seq_later: Callable[[], bytes | None] | None = None     # read_heads
        self._pools: list[PoolRange] | None = None     # per transaction: imports ask often
        self._tenant_pools: dict[str, list[PoolRange]] = {}
        self._tenants: set[str] = set()
        # X → (mode, count) as read or written in this transaction. Every xuse write goes
        # through set_use, so the cache cannot go stale; an import reads each X's use
        # twice per binding and puts several bindings on one X, so this saves LMDB reads.
        self._uses: dict[str, tuple[str, int] | None] = {}
        self._route_keys: dict[tuple[str, str], bytes] = {}

    # -- audit ------------------------------------------------------------------------------
    def audit(self, tenant: str, action: str, subject: str,
              data: Mapping[str, object] | str, actor: str | None = None) -> None:
        self._seq = seq = self._last_seq() + 1
        self.txn.put("audit", codec.audit_key(self.now, seq),
                     codec.encode_audit(seq, self.now, tenant, actor or self.actor,
                                        action, subject, data, self.keys))

    def _last_seq(self) -> int:
        """The audit sequence so far: this transaction's, or the store's."""
        if self._seq is not None:
            return self._seq
        later, self._seq_later = self._seq_later, None
        raw = later() if later is not None else self.txn.get("meta", b"audit_seq")
        return codec.from_u64(raw) if raw else 0

    def read_heads(self, tenants: Iterable[str]) -> None:
        """Read what every batch of creates reads first, together: the tenants named, the
        audit sequence, the pools (whose scan is the one wait: the other two statements
        go ahead of it and are answered with it, Txn.get_later)."""
        later = {t: self.txn.get_later("tenants", t.encode())
                 for t in set(tenants) if t not in self._tenants}
        if self._seq is None and self._seq_later is None:
            self._seq_later = self.txn.get_later("meta", b"audit_seq")
        self.pools()
        self._tenants.update(t for t, read in later.items() if read() is not None)

    def finish(self) -> None:
        self.settle()
        if self._seq is not None:
            self.txn.put("meta", b"audit_seq", codec.u64(self._seq))

    def settle(self) -> None:
        """Write what this work holds back (nothing here; _BulkWork holds a batch)."""

    def route_raw(self, key: bytes) -> bytes | None:
        """The route index's value at key, as this transaction has written it so far."""
        return self.txn.get("route", key)

    # -- bindings ---------------------------------------------------------------------------
    def route_keys(self, b: Binding) -> list[bytes]:
        return codec.route_keys(self.keys, b)

    def route_key(self, x: str, number: str) -> bytes:
        """codec.route_key, remembered for the transaction: each is an HMAC, and a batch
        asks for one up to three times (read ahead, the allocation's check, the write)."""
        key = self._route_keys.get((x, number))
        if key is None:
            key = self._route_keys[x, number] = codec.route_key(self.keys, x, number)
        return key

    def decode(self, raw: bytes) -> Binding:
        return codec.decode_binding(raw, self.keys)

    def put_binding(self, b: Binding, old: Binding | None = None) -> bool:
        """Write b and its indexes; False (nothing written) when a new b's id is taken."""
        raw = codec.encode_binding(b, self.keys)
        if old is None:
            if not self.txn.insert("bindings", b.id.encode(), raw):
                return False
        else:
            self.txn.put("bindings", b.id.encode(), raw)
        for key in self.route_keys(b):
            self.txn.put("route", key, raw)
        if old is not None and old.expires_at is not None:
            self.txn.delete("expiry", codec.expiry_key(old.expires_at, old.id))
        if b.expires_at is not None:
            self.txn.put("expiry", codec.expiry_key(b.expires_at, b.id), b"")
        if old is None:
            for number in b.held_numbers():
                use = self.use(number)
                self.set_use(number, b.mode, (use[1] if use else 0) + 1)
        return True

    def remove_binding(self, b: Binding, action: str, actor: str | None = None) -> None:
        """Unbind (delete) or expire b; its record moves to the history (issue 14 §3: who
        held X, and who ended it, stays traceable for cdr.retention_days)."""
        self.settle()
        self.txn.delete("bindings", b.id.encode())
        for key in self.route_keys(b):
            self.txn.delete("route", key)
        if b.expires_at is not None:
            self.txn.delete("expiry", codec.expiry_key(b.expires_at, b.id))
        for number in b.held_numbers():
            use = self.use(number)
            self.set_use(number, b.mode, use[1] - 1 if use else 0)
        by = actor or self.actor
        record = codec.encode_history(b, self.now, by, action, self.keys)
        until = codec.history_until(record)
        for key in codec.history_keys(b):
            self.txn.put("history", key, record)
            self.txn.put("history_end", codec.history_end_key(until, key), b"")
        self.audit(b.tenant, action, b.id, _what(b), actor)

    def purge_if_expired(self, raw: bytes | None) -> bool:
        """True when the key is free: absent, or held by an expired binding (removed now,
        so an expired pair never blocks a new one before the sweep comes round)."""
        if raw is None:
            return True
        b = self.decode(raw)
        if b.live(self.now):
            return False
        self.remove_binding(b, "expire", "sweep")
        return True

    def purge_x(self, x: str) -> int:
        """Remove expired bindings on X; return how many live ones are left."""
        self.settle()
        prefix = x.encode()
        found: list[bytes] = []
        for key, raw in self.txn.scan("route", prefix):
            if not key.startswith(prefix):
                break
            found.append(raw)
        live = {b.id for b in map(self.decode, found) if b.live(self.now)}
        for raw in found:
            b = self.decode(raw)
            if b.id not in live and self.txn.get("bindings", b.id.encode()) is not None:
                self.remove_binding(b, "expire", "sweep")
        return len(live)

    def load(self, binding_id: str, tenant: str | None) -> Binding:
        raw = self.txn.get("bindings", binding_id.encode())
        if raw is None:
            raise RecordNotFound("binding", binding_id)
        b = self.decode(raw)
        if (tenant is not None and b.tenant != tenant) or not b.live(self.now):
            raise RecordNotFound("binding", binding_id)
        return b

    # -- pools ------------------------------------------------------------------------------
    def pools(self, tenant: str | None = None) -> list[PoolRange]:
        if self._pools is None:
            self._pools = [codec.decode_pool(raw) for _, raw in self.txn.scan("pools")]
            self._tenant_pools = {}
        if tenant is None:
            return self._pools
        mine = self._tenant_pools.get(tenant)
        if mine is None:
            mine = self._tenant_pools[tenant] = [p for p in self._pools if p.tenant == tenant]
        return mine

    def tenant_known(self, tenant: str) -> bool:
        if tenant in self._tenants:
            return True
        if self.txn.get("tenants", tenant.encode()) is None:
            return False
        self._tenants.add(tenant)
        return True

    def use(self, x: str) -> tuple[str, int] | None:
        if x in self._uses:
            return self._uses[x]
        raw = self.txn.get("xuse", x.encode())
        if raw is None:
            self.txn.bare(x)
        use = self._uses[x] = codec.decode_use(raw) if raw else None
        return use

    def fetch_uses(self, xs: Iterable[str]) -> None:
        """Read, in one statement, the uses of Xs not known yet (as `use` would)."""
        uses = self._uses
        wanted = sorted({x for x in xs if x not in uses})
        if not wanted:
            return
        found = self.txn.get_many("xuse", [x.encode() for x in wanted])
        for x in wanted:
            raw = found.get(x.encode())
            if raw is None:
                self.txn.bare(x)
            uses[x] = codec.decode_use(raw) if raw else None

    def set_use(self, x: str, mode: str, count: int) -> None:
        """Record X's mode and binding count; a count of 0 frees X."""
        if count > 0:
            self.txn.put("xuse", x.encode(), codec.encode_use(mode, count))
            self._uses[x] = (_kind(mode), count)
        else:
            self.txn.delete("xuse", x.encode())
            self._uses[x] = None

    def range_in_use(self, p: PoolRange) -> tuple[int, int]:
        self.settle()
        xs = total = 0
        for key, raw in self.txn.scan("xuse", p.first.encode()):
            if key.decode() > p.last:
                break
            xs += 1
            total += codec.decode_use(raw)[1]
        return xs, total

    def add_range(self, tenant: str, rng: NumberRange, source: str) -> PoolRange:
        for p in self.pools():
            if p.first <= rng.last and rng.first <= p.last:
                if p.tenant != tenant:
                    # An X never serves two tenants: a call to it must have one owner.
                    raise ConflictError("range", f"overlaps tenant {p.tenant}'s range "
                                                 f"{p.first}-{p.last}")
                if (p.first, p.last) == (rng.first, rng.last):
                    return p
                raise ConflictError("range", f"overlaps this tenant's range "
                                             f"{p.first}-{p.last}")
        pool = PoolRange(tenant, rng.first, rng.last, source)
        self.txn.put("pools", rng.first.encode(), codec.encode_pool(pool))
        self._pools = None
        self.audit(tenant, "pool_add", str(rng), {"source": source})
        return pool

    def drop_range(self, pool: PoolRange) -> None:
        xs, total = self.range_in_use(pool)
        if total:
            raise ConflictError("range", f"{total} binding(s) on {xs} X(s) still use it")
        self.txn.delete("pools", pool.first.encode())
        self._pools = None
        self.audit(pool.tenant, "pool_remove", f"{pool.first}-{pool.last}",
                   {"source": pool.source})


Spans = list[tuple[int, int]]     # a tenant's pools as (first X, how many Xs), in order


def _spans(pools: list[PoolRange]) -> Spans:
    return [(int(p.first), p.size) for p in pools]


def _nth(spans: Spans, i: int) -> str:
    """The i-th X of the pools, counted across them in order."""
    for first, size in spans:
        if i < size:
            return str(first + i)
        i -= size
    raise IndexError(i)


def _draw(rng: random.Random, spans: Spans, total: int) -> list[str]:
    """The Xs an allocation probes: _RANDOM_PROBES (or every X of a smaller pool) drawn
    at random, all before any is looked at, so that a batch can draw the same ones ahead
    from a copy of the rng (RuleStore._read_ahead)."""
    return [_nth(spans, rng.randrange(total)) for _ in range(min(_RANDOM_PROBES, total))]


def _twin(rng: random.Random) -> random.Random | None:
    """A copy of rng, which draws what rng will draw next (None for a SystemRandom,
    which has no state to copy)."""
    try:
        state = rng.getstate()
    except NotImplementedError:
        return None
    twin = random.Random()
    twin.setstate(state)
    return twin


def _searched(work: _Work, probes: list[str], exclude: str | None = None) -> list[str]:
    """The probes that the least-used search of `_allocate` looks at: up to the first X
    without a use, where it stops (their uses fetched already: fetch_uses)."""
    for i, x in enumerate(probes):
        if x != exclude and work.use(x) is None:
            return probes[:i + 1]
    return probes


def _keys_on(work: _Work, xs: Iterable[str], callers: Callers) -> builtins.list[bytes]:
    """The route keys that checking `callers` on these Xs reads: only on an X in use (an
    X without a use has no route key; the uses fetched already: fetch_uses)."""
    return [work.route_key(x, number) for x in xs if work.use(x) is not None
            for _, number in callers]


class _BulkWork(_Work):
    """One create_many batch. New bindings' records, index keys and audit entries are held
    in this work and written when the batch ends, sorted, one Txn.put_many per database (a
    C loop over the keys instead of six Python-level puts per binding; sorted keys also
    dirty fewer pages, and the commit took a tenth of the time), and each X's use is
    written once however many of the batch's bindings it takes. A route read looks in the
    held keys first, so a line sees the lines before it; anything that deletes or scans
    settles (writes what is held) first, so it sees the transaction whole."""

    _HELD = ("bindings", "route", "expiry", "audit")

    def __init__(self, txn: Txn, now: float, actor: str, keys: Keyring) -> None:
        super().__init__(txn, now, actor, keys)
        self.held: dict[str, dict[bytes, bytes]] = {db: {} for db in self._HELD}
        self._route = self.held["route"]
        self._dirty_uses: set[str] = set()
        self._audit_at = codec.audit_key(now, 0)[:8]
        self._expiry_at: dict[float, bytes] = {}
        self._plain_pools: dict[str, builtins.list[tuple[str, str]]] = {}
        self._ids: builtins.list[str] = []

    def route_raw(self, key: bytes) -> bytes | None:
        raw = self._route.get(key)
        return raw if raw is not None else self.txn.get("route", key)

    def put_binding(self, b: Binding, old: Binding | None = None) -> bool:
        if old is not None:
            self.settle()
            return super().put_binding(b, old)
        key = b.id.encode()
        bindings = self.held["bindings"]
        if key in bindings:
            return False
        raw = codec.encode_binding(b, self.keys)
        bindings[key] = raw
        for route_key in self.route_keys(b):
            self._route[route_key] = raw
        if b.expires_at is not None:
            at = self._expiry_at.get(b.expires_at)
            if at is None:
                at = self._expiry_at[b.expires_at] = codec.expiry_key(b.expires_at, "")
            self.held["expiry"][at + key] = b""
        for number in b.held_numbers():
            use = self.use(number)
            self._uses[number] = (_kind(b.mode), (use[1] if use else 0) + 1)
            self._dirty_uses.add(number)
        return True

    def audit(self, tenant: str, action: str, subject: str,
              data: Mapping[str, object] | str, actor: str | None = None) -> None:
        self._seq = seq = self._last_seq() + 1
        self.held["audit"][self._audit_at + codec.u64(seq)] = codec.encode_audit(
            seq, self.now, tenant, actor or self.actor, action, subject, data, self.keys)

    def settle(self) -> None:
        for db, rows in self.held.items():
            if not rows:
                continue
            items = [(key, rows[key]) for key in sorted(rows)]
            rows.clear()
            if db != "bindings":
                self.txn.put_rows(db, items)
            else:        # a new binding never overwrites one stored (KeyExists)
                self.txn.insert_rows(db, items)
        uses = self._uses
        dirty = sorted(self._dirty_uses)
        self._dirty_uses.clear()
        counted = [(x.encode(), codec.encode_use(*use)) for x in dirty
                   if (use := uses[x]) is not None]
        if counted:
            self.txn.put_rows("xuse", counted)
        for x in dirty:
            if uses[x] is None:
                self.txn.delete("xuse", x.encode())

    def set_use(self, x: str, mode: str, count: int) -> None:
        self._dirty_uses.discard(x)
        super().set_use(x, mode, count)

    def create_plain(self, req: BindingRequest, tenant: str | None,
                     allocate: Callable[[_Work, str, str, Callers], str]
                     ) -> Binding | None:
        """The usual import line, checked and written without the general path's detours:
        AXB or AXN, numbers already in national form, no policy rules, and X given and
        free of anything in the way, or allocated (by RuleStore._allocate, as _create
        does). Every rule of RuleStore._create holds here by the same tests, in the same
        order; a line that is anything else returns None, untouched, and _create decides
        it (refusing it by field, normalising its numbers, purging an expired holder)."""
        mode, a, b, x, ttl = req.mode, req.a, req.b, req.x, req.ttl
        if (not tenant or type(ttl) is not int or not 0 <= ttl <= MAX_TTL
                or req.direction != "both" or req.max_duration_s is not None
                or req.max_concurrent is not None or req.blacklist
                or req.ext is not None or req.y is not None or req.record is not False):
            return None
        # normalise_real / normalise_x return such a number unchanged; anything else
        # (a prefix, separators, an invalid number) goes the long way to be normalised.
        if not (type(a) is str and _is_real(a)):
            return None
        if x == "":
            x = None
        elif x is not None and not (type(x) is str and _is_x(x)):
            return None
        if mode == "axb":
            if not (type(b) is str and _is_real(b)) or a == b:
                return None
        elif mode != "axn" or b not in (None, ""):
            return None
        else:
            b = None
        pools = self._plain_pools.get(tenant)
        if pools is None:
            if not self.tenant_known(tenant):
                return None
            pools = self._plain_pools[tenant] = [(p.first, p.last) for p in self.pools(tenant)]
        if x is None:
            # PoolExhausted refuses, as in _create.
            x = allocate(self, tenant, mode, _callers_on(mode, a, b))
        else:
            for first, last in pools:
                if first <= x <= last:
                    break
            else:
                return None
        key_a = key_b = b""
        if b is not None:
            key_a, key_b = self.route_key(x, a), self.route_key(x, b)
        use = self.use(x)
        if use is not None:
            # AXN takes X whole, AXE keeps X to its own kind; a number appears once per
            # X. _create purges expired holders before it refuses, so any holder at all
            # sends the line there.
            if mode == "axn" or use[0] != mode:
                return None
            route = self._route
            get = self.txn.get
            if (key_a in route or key_b in route or get("route", key_a) is not None
                    or get("route", key_b) is not None):
                return None
        if not self._ids:
            self._ids = codec.new_ids(self.now, 512)
        binding_id = self._ids.pop()
        id_key = binding_id.encode()
        bindings = self.held["bindings"]
        if id_key in bindings:
            return None   # an id drawn twice in a batch: _create draws another
        now = self.now
        expires = now + ttl if ttl else None
        binding = codec.new_binding(binding_id, mode, tenant, x, a, b, now, expires)
        raw = codec.encode_binding(binding, self.keys)
        bindings[id_key] = raw
        route = self._route
        if b is None:
            route[x.encode()] = raw
        else:
            route[key_a] = raw
            route[key_b] = raw
        if expires is not None:
            at = self._expiry_at.get(expires)
            if at is None:
                at = self._expiry_at[expires] = codec.expiry_key(expires, "")
            self.held["expiry"][at + id_key] = b""
        self._uses[x] = (mode, (use[1] if use else 0) + 1)
        self._dirty_uses.add(x)
        self.audit(tenant, "create", binding_id, codec.binding_summary(binding))
        return binding


class RuleStore:
    """Every BindingStore operation, over `_read` / `_write` that subclasses provide."""

    # Whether the rules fetch what they will read together first (_read_ahead, and an
    # allocation's probes): a backend whose every read is a round trip says so
    # (PostgreSQL). On LMDB a read is a memory lookup, and fetching ahead costs more CPU
    # than it saves (a bulk import with allocated Xs took 30 µs more per binding). What
    # the rules decide is the same either way.
    reads_ahead = False

    def __init__(self, clock: Clock | None = None, rng: random.Random | None = None,
                 keys: Keyring | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        # Seals every real number this store writes (store/crypto.py). A backend that keeps
        # records across processes passes the key file's; the default lives and dies with
        # the process (the in-memory store).
        self.keys = keys or Keyring.generate()
        # How long a removed binding stays in the history for `trace` (cdr.retention_days;
        # None: for ever). open_store sets it from the config.
        self.history_keep_s: float | None = None
        # The config's tenants (sync_tenants): their ext_digits for AXE extensions.
        self.tenant_config: dict[str, TenantConfig] = {}

    # -- what a backend provides ------------------------------------------------------------
    def _read(self, fn: Callable[[Txn], T]) -> T:
        raise NotImplementedError

    def _write(self, fn: Callable[[Txn], T]) -> T:
        """Run fn in one write transaction; fn may run again (e.g. after the map grew)."""
        raise NotImplementedError

    def read(self, fn: Callable[[Txn], T]) -> T:
        """Run fn in a read transaction (a snapshot of the last commit). For modules that
        keep their own records beside the bindings (cdrs, outbox): txn.get("cdrs", key)."""
        return self._read(fn)

    def write(self, fn: Callable[[Txn], T]) -> T:
        """Run fn in one write transaction, committed (synced) on return; fn may run twice
        when the map grows, so it must only read and write through txn."""
        return self._write(fn)

    def close(self) -> None:
        """Nothing to release by default."""

    def _now(self, now: float | None) -> float:
        return self.clock.wall() if now is None else now

    def _work(self, fn: Callable[[_Work], T], actor: str, now: float | None = None,
              work_class: type[_Work] = _Work) -> T:
        if actor not in ACTORS:
            raise RefusedError("actor", f"must be one of {', '.join(ACTORS)}")
        at = self._now(now)

        def run(txn: Txn) -> T:
            work = work_class(txn, at, actor, self.keys)
            out = fn(work)
            work.finish()
            return out
        return self._write(run)

    # -- tenants ----------------------------------------------------------------------------
    def tenants(self) -> builtins.list[str]:
        return self._read(lambda txn: [k.decode() for k, _ in txn.scan("tenants")])

    def ext_digits(self, tenant: str) -> int:
        """How many digits the tenant's AXE extensions have (tenants.<t>.ext_digits)."""
        found = self.tenant_config.get(tenant)
        return found.ext_digits if found is not None else DEFAULT_EXT_DIGITS

    def sync_tenants(self, tenants: Mapping[str, TenantConfig]) -> None:
        self.tenant_config = dict(tenants)

        def wanted(txn: Txn) -> bool:
            work = _Work(txn, 0.0, "config", self.keys)
            have = {(p.tenant, p.first, p.last) for p in work.pools() if p.source == "config"}
            want = {(t, r.first, r.last) for t, tc in tenants.items() for r in tc.pools}
            known = {k.decode() for k, _ in txn.scan("tenants")}
            return have != want or not set(tenants) <= known
        if not self._read(wanted):
            return   # nothing changed: opening the store does not write (no fsync per CLI run)

        def sync(work: _Work) -> None:
            for name in tenants:
                if not work.tenant_known(name):
                    work.txn.put("tenants", name.encode(), codec.encode_json({"source": "config"}))
            want = {(t, r.first, r.last) for t, tc in tenants.items() for r in tc.pools}
            for p in work.pools():
                if p.source == "config" and (p.tenant, p.first, p.last) not in want:
                    _, total = work.range_in_use(p)
                    if not total:   # a range still in use stays until its bindings end
                        work.drop_range(p)
            for name, tc in tenants.items():
                for rng in tc.pools:
                    try:
                        work.add_range(name, rng, "config")
                    except RefusedError as exc:
                        raise ConfigError("store", f"tenants.{name}.pools",
                                          exc.message, str(rng)) from None
        self._work(sync, "config")

    def _tenant(self, work: _Work, tenant: str | None) -> str:
        if tenant is None or tenant == "":
            names = [k.decode() for k, _ in work.txn.scan("tenants")]
            if len(names) == 1:
                return names[0]
            raise RefusedError("tenant", "required: more than one tenant is configured"
                               if names else "no tenant is configured")
        if not work.tenant_known(tenant):
            raise RefusedError("tenant", f"unknown tenant {tenant!r}")
        return tenant

    # -- create -----------------------------------------------------------------------------
    def _create(self, work: _Work, req: BindingRequest) -> Binding:
        mode = req.mode
        if mode not in MODES:
            raise RefusedError("mode", f"must be one of {', '.join(MODES)}")
        tenant = self._tenant(work, req.tenant)
        a = _refuse_number("a", req.a, numbers.normalise_real)
        b: str | None = None
        if mode in PAIR_MODES or (mode == "axe" and req.b not in (None, "")):
            b = _refuse_number("b", req.b, numbers.normalise_real)
            if a == b:
                raise RefusedError("b", "must differ from a")
        elif req.b not in (None, ""):
            raise RefusedError("b", "an AXN binding has no b")
        if req.ext not in (None, "") and mode != "axe":
            raise RefusedError("ext", "only an AXE binding has an extension")
        if req.y not in (None, "") and mode != "axyb":
            raise RefusedError("y", "only an AXYB binding has a y")
        if not isinstance(req.record, bool):
            raise RefusedError("record", "must be true or false")
        ttl = _ttl(req.ttl)
        policy = _policy_fields(req)
        digits = self.ext_digits(tenant)
        ext = None if req.ext in (None, "") else _ext_digits("ext", req.ext, digits, tenant)
        callers = _callers_on(mode, a, b)
        if req.x not in (None, ""):
            x = self._in_pool(work, tenant, "x", req.x)
            self._check_x(work, mode, x, callers)
        else:
            x = self._allocate(work, tenant, mode, callers)
        y: str | None = None
        if mode == "axyb":
            # B dials Y to reach A: Y is held like an X (same pool, same rules), by B's key.
            if req.y not in (None, ""):
                y = self._in_pool(work, tenant, "y", req.y)
                if y == x:
                    raise RefusedError("y", "must differ from x")
                self._check_x(work, mode, y, (("b", str(b)),), "y")
            else:
                y = self._allocate(work, tenant, mode, (("b", str(b)),), exclude=x, field="y")
        if mode == "axe":
            ext = self._claim_ext(work, x, ext, digits, tenant)
        expires = work.now + ttl if ttl else None
        extra: dict[str, object] = dict(policy)
        if ext is not None:
            extra["ext"] = ext
        if y is not None:
            extra["y"] = y
        if req.record:
            extra["record"] = True
        while True:   # 52 random bits per ms: a clash is all but impossible; never overwrite
            binding = codec.new_binding(codec.new_id(work.now), mode, tenant, x, a, b,
                                        work.now, expires)
            if extra:
                binding = binding._replace(**extra)  # type: ignore[arg-type]
            if work.put_binding(binding):
                break
        work.audit(tenant, "create", binding.id, _what(binding))
        return binding

    @staticmethod
    def _in_pool(work: _Work, tenant: str, field: str, raw: str | None) -> str:
        number = _refuse_number(field, raw, numbers.normalise_x)
        if not any(p.first <= number <= p.last for p in work.pools(tenant)):
            raise RefusedError(field, f"not in tenant {tenant}'s pool")
        return number

    def _check_x(self, work: _Work, mode: str, x: str, callers: Callers,
                 field: str = "x") -> None:
        """Refuse X (field "x", or "y" for an AXYB binding's Y) when the binding cannot
        go on it: another kind holds it, or a caller already has a binding there. Expired
        holders in the way are removed first, so they never block a new binding."""
        name = field.upper()
        kind = _kind(mode)
        use = work.use(x)
        if use is not None and (kind == "axn" or use[0] != kind) and work.purge_x(x):
            if use[0] == "axn":
                raise ConflictError(field, f"{name} carries an AXN binding, which takes it whole")
            if kind == "axn":
                raise ConflictError(field, "an AXN binding needs an X with no other binding")
            if use[0] == "axe":
                raise ConflictError(field, f"{name} carries AXE bindings (told apart by "
                                           "extension); it takes no other kind")
            raise ConflictError(field, f"{name} carries AXB/AXYB pairs; an AXE binding "
                                       "needs an X of its own")
        # A number appears at most once per X (and per Y), so a call from it has one answer.
        for who, number in callers:
            if not work.purge_if_expired(work.route_raw(work.route_key(x, number))):
                raise ConflictError(who, f"already bound on this {name}")

    def _fits(self, work: _Work, mode: str, x: str, callers: Callers,
              room: int | None = None) -> int | None:
        """How many bindings X carries if this one fits on it, else None (reads only).
        `room`: how many bindings X may carry (AXE: one per extension)."""
        use = work.use(x)
        if use is None:
            return 0
        kind = _kind(mode)
        if kind == "axn" or use[0] != kind:
            return None
        if room is not None and use[1] >= room:
            return None     # every extension taken (_claim_ext has the last word)
        for _, number in callers:
            raw = work.route_raw(work.route_key(x, number))
            if raw is not None and work.decode(raw).live(work.now):
                return None
        return use[1]

    def _allocate(self, work: _Work, tenant: str, mode: str, callers: Callers,
                  exclude: str | None = None, field: str = "x") -> str:
        spans = _spans(work.pools(tenant))
        total = sum(size for _, size in spans)
        if not total:
            raise PoolExhausted(field, f"tenant {tenant} has no pool of X numbers")
        room = 10 ** self.ext_digits(tenant) if mode == "axe" else None

        def fits(x: str) -> int | None:
            return None if x == exclude else self._fits(work, mode, x, callers, room)

        # Fair spread: the least used of a few random Xs; a walk from a random start only
        # when those all clash, so exhaustion is certain before it is reported. The Xs are
        # drawn before any is looked at, and what `fits` reads of them is fetched at once:
        # their uses, then the callers' route keys on those in use (a batch has fetched
        # them all already: _read_ahead).
        probes = _draw(self.rng, spans, total)
        if self.reads_ahead:
            work.fetch_uses(probes)
            work.txn.fetch(_keys_on(work, (x for x in _searched(work, probes, exclude)
                                           if x != exclude), callers))
        best: tuple[int, str] | None = None
        for x in probes:
            used = fits(x)
            if used is not None and (best is None or used < best[0]):
                best = (used, x)
                if used == 0:
                    break
        if best is None:
            start = self.rng.randrange(total)
            for i in range(total):
                x = _nth(spans, (start + i) % total)
                if fits(x) is not None:
                    best = (0, x)
                    break
        if best is None:
            what = "pair" if mode in PAIR_MODES else "number"
            raise PoolExhausted(field, f"no free {field.upper()} in tenant {tenant}'s pool "
                                       f"for this {what}")
        # Purges expired holders it found free.
        self._check_x(work, mode, best[1], callers, field)
        return best[1]

    def _claim_ext(self, work: _Work, x: str, ext: str | None, digits: int,
                   tenant: str) -> str:
        """The AXE binding's extension on X: the one given, if free; else one drawn at
        random from X's free extensions of `digits` digits (random, so knowing one
        extension tells nothing of the next). An expired holder is removed first."""
        if ext is not None:
            if not work.purge_if_expired(work.route_raw(codec.ext_key(x, ext))):
                raise ConflictError("ext", "already bound on this X")
            return ext
        capacity = 10 ** digits
        taken: builtins.list[int] = []
        expired: set[int] = set()
        work.settle()
        prefix = codec.ext_prefix(x)
        for key, raw in work.txn.scan("route", prefix):
            if not key.startswith(prefix):
                break
            digits_of = key[len(prefix):]
            if len(digits_of) != digits:
                continue
            if codec.binding_live(raw, work.now):
                taken.append(int(digits_of))
            else:
                expired.add(int(digits_of))
        if len(taken) >= capacity:
            raise PoolExhausted("ext", f"all {capacity} extensions of {digits} digits on "
                                       f"this X are taken (tenants.{tenant}.ext_digits)")
        # The r-th free extension: step r over every taken one at or below it (sorted).
        r = self.rng.randrange(capacity - len(taken))
        for t in taken:
            if t > r:
                break
            r += 1
        chosen = f"{r:0{digits}d}"
        if r in expired:
            work.purge_if_expired(work.route_raw(codec.ext_key(x, chosen)))
        return chosen

    def create(self, *, mode: str, tenant: str | None, a: str, b: str | None = None,
               x: str | None = None, ttl: int = DEFAULT_TTL, actor: str = "cli",
               now: float | None = None, direction: str = "both",
               max_duration_s: int | None = None, max_concurrent: int | None = None,
               blacklist: tuple[str, ...] = (), ext: str | None = None,
               y: str | None = None, record: bool = False) -> Binding:
        req = BindingRequest(mode, a, b, x, ttl, tenant, direction, max_duration_s,
                             max_concurrent, tuple(blacklist), ext, y, record)
        return self._work(lambda work: self._create(work, req), actor, now)

    def create_many(self, requests: Iterable[tuple[int, BindingRequest]], *,
                    actor: str = "import", batch: int = 5000,
                    default_tenant: str | None = None) -> Iterator[ImportOutcome]:
        chunk: builtins.list[tuple[int, BindingRequest]] = []

        def run(work: _Work) -> builtins.list[ImportOutcome]:
            assert isinstance(work, _BulkWork)
            if self.reads_ahead:
                self._read_ahead(work, chunk, default_tenant)
            out = []
            plain, allocate = work.create_plain, self._allocate
            for line, req in chunk:
                try:
                    made = plain(req, default_tenant if req.tenant is None else req.tenant,
                                 allocate)
                    if made is None:
                        if req.tenant is None and default_tenant is not None:
                            req = req._replace(tenant=default_tenant)
                        made = self._create(work, req)
                    out.append(ImportOutcome(line, made))
                except RefusedError as exc:
                    out.append(ImportOutcome(line, field=exc.field, reason=exc.message))
            return out

        def commit() -> builtins.list[ImportOutcome]:
            for _ in range(_RETRIES_ON_CLASH):
                try:
                    return self._work(run, actor, work_class=_BulkWork)
                except KeyExists:
                    continue
            raise StoreError("binding ids kept clashing with stored ones")

        for item in requests:
            chunk.append(item)
            if len(chunk) >= batch:
                yield from commit()
                chunk = []
        if chunk:
            yield from commit()

    def _read_ahead(self, work: _Work, lines: builtins.list[tuple[int, BindingRequest]],
                    default_tenant: str | None) -> None:
        """Fetch what a batch's lines will read, one statement per table (Txn.get_many),
        before its rules run, where each read would be a round trip on PostgreSQL: the
        tenants, pools and audit sequence (one round trip: read_heads), the uses of the
        Xs (and Ys) the lines name, and their callers' route keys on those in use; for a
        line whose X is allocated, the same of the Xs `_allocate` will probe, drawn ahead
        from a copy of the rng. The draws are the ones the rules will make as
        long as each line before allocates as foreseen (a line refused before its
        allocation draws nothing, an AXE extension drawn at random takes draws too);
        when they are not, the rules read what they miss, a key at a time. Reads only:
        what the rules decide does not change."""
        work.read_heads(t for _, req in lines
                        if (t := default_tenant if req.tenant is None else req.tenant))
        ahead = _twin(self.rng)
        named: builtins.list[tuple[str, Callers]] = []           # an X or Y a line gives
        drawn: builtins.list[tuple[builtins.list[str], Callers]] = []   # an allocation's
        pools: dict[str, tuple[Spans, int]] = {}
        for _, req in lines:
            a, b = _national(req.a, numbers.normalise_real), _national(req.b,
                                                                        numbers.normalise_real)
            if a is None or req.mode not in MODES:
                continue            # refused before any allocation
            tenant = default_tenant if req.tenant is None else req.tenant
            wanted = [(req.x, _callers_on(req.mode, a, b))]
            if req.mode == "axyb" and b is not None:
                wanted.append((req.y, (("b", b),)))
            for given, callers in wanted:
                if given not in (None, ""):
                    x = _national(given, numbers.normalise_x)
                    if x is not None:
                        named.append((x, callers))
                elif ahead is not None and tenant:
                    if tenant not in pools:
                        spans = _spans(work.pools(tenant))
                        pools[tenant] = spans, sum(size for _, size in spans)
                    spans, total = pools[tenant]
                    if total:
                        drawn.append((_draw(ahead, spans, total), callers))
            if req.mode == "axe" and req.ext in (None, ""):
                ahead = None        # _claim_ext draws the extension: later draws unknown
        work.fetch_uses([*(x for x, _ in named), *(x for xs, _ in drawn for x in xs)])
        work.txn.fetch([*(key for x, callers in named for key in _keys_on(work, (x,), callers)),
                        *(key for xs, callers in drawn
                          for key in _keys_on(work, _searched(work, xs), callers))])

    # -- read, change, delete ---------------------------------------------------------------
    def get(self, binding_id: str, tenant: str | None = None) -> Binding:
        now = self.clock.wall()
        return self._read(lambda txn: _Work(txn, now, "cli", self.keys).load(binding_id,
                                                                             tenant))

    def delete(self, binding_id: str, tenant: str | None = None, actor: str = "cli") -> None:
        def run(work: _Work) -> None:
            work.remove_binding(work.load(binding_id, tenant), "delete")
        self._work(run, actor)

    def update_ttl(self, binding_id: str, ttl: int, tenant: str | None = None,
                   actor: str = "cli") -> Binding:
        seconds = _ttl(ttl)

        def run(work: _Work) -> Binding:
            old = work.load(binding_id, tenant)
            new = old._replace(expires_at=work.now + seconds if seconds else None)
            work.put_binding(new, old)
            work.audit(new.tenant, "update", new.id,
                       {"expires_at": new.expires_at, "was": old.expires_at})
            return new
        return self._work(run, actor)

    def list(self, tenant: str | None = None, x: str | None = None,
             limit: int = 1000) -> builtins.list[Binding]:
        row_limit(limit)
        now = self.clock.wall()
        keys = self.keys

        def run(txn: Txn) -> builtins.list[Binding]:
            out: builtins.list[Binding] = []
            seen: set[str] = set()
            if x is not None:
                prefix = _refuse_number("x", x, numbers.normalise_x).encode()
                rows: Iterable[tuple[bytes, bytes]] = txn.scan("route", prefix)
            else:
                prefix = b""
                rows = txn.scan("bindings")
            for key, raw in rows:
                if len(out) >= limit or not key.startswith(prefix):
                    break
                b = codec.decode_binding(raw, keys)
                if b.id in seen or not b.live(now) or (tenant is not None and b.tenant != tenant):
                    continue
                seen.add(b.id)
                out.append(b)
            return out
        return self._read(run)

    def route(self, x: str, caller: str, now: float, ext: str | None = None) -> Binding | None:
        return self._read(lambda txn: self._route_in(txn, x, caller, now, ext))

    def _route_in(self, txn: Txn, x: str, caller: str, now: float,
                  ext: str | None) -> Binding | None:
        """The lookup's rule: with an AXE extension, X + E's binding; else the caller's own
        binding on X, or any live one on X (`_any_on_x`: 403 rather than 404)."""
        if ext is not None:
            return self._on_ext(txn, x, ext, now)
        found = self._live_binding(txn.get("route", codec.route_key(self.keys, x, caller)), now)
        return found if found is not None else self._any_on_x(txn, x, now)

    def _live_binding(self, raw: bytes | None, now: float) -> Binding | None:
        """The binding a route record holds, if there is one and it is live at `now`."""
        if raw is None:
            return None
        b = codec.decode_binding(raw, self.keys)
        return b if b.live(now) else None

    def _on_ext(self, txn: Txn, x: str, ext: str, now: float) -> Binding | None:
        """The live AXE binding with extension `ext` on X (digits only, at most
        MAX_EXT_DIGITS: anything else names no binding)."""
        if not (0 < len(ext) <= MAX_EXT_DIGITS and ext.isascii() and ext.isdigit()):
            return None
        return self._live_binding(txn.get("route", codec.ext_key(x, ext)), now)

    def _any_on_x(self, txn: Txn, x: str, now: float) -> Binding | None:
        """The AXN binding on X (its key is X alone, so it sorts first), or any live AXB one
        so that a stranger is told 403 rather than 404."""
        prefix = x.encode()
        for i, (key, raw) in enumerate(txn.scan("route", prefix)):
            if i >= _ROUTE_SCAN or not key.startswith(prefix):
                break
            if (b := self._live_binding(raw, now)) is not None:
                return b
        return None

    def sweep(self, now: float, limit: int = 1000) -> int:
        """Expired bindings (moved to the history), then history records past
        `history_keep_s`; up to `limit` records in all, in one transaction."""
        now_ms = int(now * 1000)
        keep = self.history_keep_s
        forget_ms = int((now - keep) * 1000) if keep else None

        def due(txn: Txn) -> tuple[builtins.list[str], builtins.list[bytes]]:
            ids: builtins.list[str] = []
            for key, _ in txn.scan("expiry"):
                if len(ids) >= limit or codec.expiry_ms(key) > now_ms:
                    break
                ids.append(key[8:].decode())
            old: builtins.list[bytes] = []
            if forget_ms is not None:
                for key, _ in txn.scan("history_end"):
                    if len(ids) + len(old) >= limit or codec.expiry_ms(key) > forget_ms:
                        break
                    old.append(key)
            return ids, old
        if not any(self._read(due)):
            return 0   # nothing due: no write transaction, no fsync

        def run(work: _Work) -> int:
            done = 0
            ids, old = due(work.txn)
            for binding_id in ids:
                raw = work.txn.get("bindings", binding_id.encode())
                if raw is None:
                    continue
                b = work.decode(raw)
                if not b.live(now):
                    work.remove_binding(b, "expire")
                    done += 1
            for end_key in old:
                work.txn.delete("history_end", end_key)
                work.txn.delete("history", end_key[8:])
                done += 1
            return done
        return self._work(run, "sweep", now)

    # -- trace (issue 14 §3) ----------------------------------------------------------------
    def trace(self, x: str, at: float) -> builtins.list[HeldBinding]:
        """Every binding that held X at `at`: live ones and those in the history (removed
        within history_keep_s), oldest first, with who created and who ended each."""
        number = _refuse_number("x", x, numbers.normalise_x)
        moment("at", at)
        keys = self.keys
        at_ms = int(at * 1000)

        def run(txn: Txn) -> builtins.list[HeldBinding]:
            found: dict[str, HeldBinding] = {}
            prefix = number.encode()
            for key, raw in txn.scan("route", prefix):
                if not key.startswith(prefix):
                    break
                b = codec.decode_binding(raw, keys)
                if b.id in found or not b.created_at <= at or not b.live(at):
                    continue
                ended = b.expires_at if not b.live(self.clock.wall()) else None
                found[b.id] = HeldBinding(b, _creator(txn, b, keys), ended, None,
                                          "expiry" if ended is not None else None)
            for key, raw in txn.scan("history", codec.history_x_prefix(number)):
                if not key.startswith(prefix) or codec.history_created_ms(key, number) > at_ms:
                    break
                if codec.history_until(raw) <= at:
                    continue   # ended before `at`: not read further
                gone = codec.decode_history(raw, keys)
                b = gone.binding
                if b.created_at <= at:
                    found[b.id] = HeldBinding(
                        b, _creator(txn, b, keys), gone.until,
                        gone.actor if gone.until == gone.removed_at else None,
                        "unbind" if gone.action == "delete" and gone.until == gone.removed_at
                        else "expiry")
            return sorted(found.values(), key=lambda h: (h.binding.created_at, h.binding.id))
        return self._read(run)

    # -- pools ------------------------------------------------------------------------------
    def add_pool(self, tenant: str | None, pool: str | NumberRange,
                 actor: str = "cli") -> PoolRange:
        rng = parse_range(pool)
        return self._work(lambda w: w.add_range(self._tenant(w, tenant), rng, "store"), actor)

    def remove_pool(self, tenant: str | None, pool: str | NumberRange,
                    actor: str = "cli") -> None:
        rng = parse_range(pool)

        def run(work: _Work) -> None:
            name = self._tenant(work, tenant)
            for p in work.pools(name):
                if (p.first, p.last) == (rng.first, rng.last):
                    if p.source == "config":
                        raise RefusedError("range", "set in the config file: remove it there")
                    work.drop_range(p)
                    return
            raise RecordNotFound("pool", str(rng))
        self._work(run, actor)

    def list_pools(self, tenant: str | None = None) -> builtins.list[PoolUsage]:
        def run(txn: Txn) -> builtins.list[PoolUsage]:
            work = _Work(txn, 0.0, "cli", self.keys)
            return [PoolUsage(p, *work.range_in_use(p)) for p in work.pools(tenant)]
        return self._read(run)

    # -- audit ------------------------------------------------------------------------------
    def audit(self, since: float | None = None, tenant: str | None = None,
              limit: int = 100) -> builtins.list[AuditEntry]:
        row_limit(limit)
        if since is not None:
            moment("since", since)

        def run(txn: Txn) -> builtins.list[AuditEntry]:
            out: builtins.list[AuditEntry] = []
            rows = (txn.scan("audit", reverse=True) if since is None
                    else txn.scan("audit", codec.audit_key(since, 0)))
            for _, raw in rows:
                if len(out) >= limit:
                    break
                entry = codec.decode_audit(raw, self.keys)
                if tenant is None or entry.tenant == tenant:
                    out.append(entry)
            return out[::-1] if since is None else out
        return self._read(run)

    def schema_version(self) -> int:
        raw = self._read(lambda txn: txn.get("meta", b"schema_version"))
        return int(raw) if raw else 0

