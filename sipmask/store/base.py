"""The bindings store: records and the Protocol the call path, the CLI and the API code against.

Two implementations share one set of rules (store/rules.py): LMDB (store/lmdb.py) for every
process that runs, and an in-memory one (store/memory.py) for unit tests of other modules.
Real numbers are sealed at rest (store/crypto.py); these records hold them in clear.

Inputs arrive un-normalised (numbers.normalise_real / normalise_x run inside `create`);
`route()` is the call path and takes numbers already normalised by b2bua/routing.py.
Errors: errors.RefusedError(field, message), ConflictError, PoolExhausted (field "x"),
RecordNotFound.

The call path, for every mode (issue 15 §3), is two steps:
  1. `store.route(number, caller, now, ext=None)`: the binding for this call (number is
     the dialled X or, for AXYB, Y; ext the AXE extension when the caller gave one);
  2. `target(binding, number, caller, ext)`: the new leg (`Target`: whom to dial, which
     700 number they see, the CDR direction) or a `Refusal` (403; or, on an AXE number
     reached without an extension, "ask for one": play ext_prompt, collect the digits and
     go back to step 1 with them).
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

from sipmask import numbers
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.times import iso

if TYPE_CHECKING:
    from sipmask.store.crypto import Keyring

Mode = Literal["axb", "axn", "axe", "axyb"]
Actor = Literal["cli", "api", "import", "sweep", "config"]
MODES: tuple[str, ...] = ("axb", "axn", "axe", "axyb")
PAIR_MODES: tuple[str, ...] = ("axb", "axyb")     # two parties who call each other
ACTORS: tuple[str, ...] = ("cli", "api", "import", "sweep", "config")
DEFAULT_TTL = 7200


class Binding(NamedTuple):
    """Who may reach whom through X, until when (CONTRACT "Words").

    The policy fields after `expires_at` are optional and default to "no rule"; the encoding
    (store/codec.py) carries them only when set, so older records read as defaults and a
    newer field this version does not know is ignored on read.

    A typed NamedTuple rather than a frozen dataclass: the call path decodes one per INVITE,
    and `Binding._make` fills every field in C (codec.decode_binding), about a fifth of the
    cost of filling a dataclass's `__dict__` (0.15 µs against 0.9 µs here), which was a
    quarter of a route lookup. It is immutable, compared and hashed by value like the
    dataclass was; change a field with `_replace`.
    """

    id: str
    mode: str                      # "axb" | "axn" | "axe" | "axyb"
    tenant: str
    x: str
    a: str
    b: str | None                  # None for AXN; optional for AXE
    created_at: float              # unix seconds
    expires_at: float | None       # unix seconds; None: no expiry (ttl 0)
    direction: str = "both"        # a_to_b | b_to_a | both (policy issue)
    max_duration_s: int | None = None
    max_concurrent: int | None = None
    blacklist: tuple[str, ...] = ()
    ext: str | None = None         # AXE: the extension that tells this binding apart on X
    y: str | None = None           # AXYB: the number B calls to reach A (and B sees from A)
    record: bool = False           # record this binding's calls (with recording_notice)

    def held_numbers(self) -> tuple[str, ...]:
        """The 700 numbers this binding holds: X, and Y for AXYB."""
        return (self.x,) if self.y is None else (self.x, self.y)

    def live(self, now: float) -> bool:
        """Expired bindings stop routing at once, before the sweep removes them."""
        return self.expires_at is None or now < self.expires_at

    def to_json(self) -> dict[str, object]:
        """CONTRACT's binding JSON: times as ISO-8601 UTC strings plus the unix numbers."""
        out: dict[str, object] = {
            "id": self.id, "mode": self.mode, "tenant": self.tenant, "x": self.x,
            "a": self.a, "b": self.b,
            "created_at": iso(self.created_at), "expires_at": iso(self.expires_at),
            "created_at_unix": self.created_at, "expires_at_unix": self.expires_at,
        }
        if self.direction != "both":
            out["direction"] = self.direction
        if self.max_duration_s is not None:
            out["max_duration_s"] = self.max_duration_s
        if self.max_concurrent is not None:
            out["max_concurrent"] = self.max_concurrent
        if self.blacklist:
            out["blacklist"] = list(self.blacklist)
        if self.ext is not None:
            out["ext"] = self.ext
        if self.y is not None:
            out["y"] = self.y
        if self.record:
            out["record"] = True
        return out


class BindingRequest(NamedTuple):
    """One binding to create, un-normalised, as the CLI, the API or an import line gives it.

    A NamedTuple, as Binding is: an import builds one per line, and the frozen dataclass's
    __init__ cost 1.8 µs of it, this 0.4 µs. Change a field with `_replace`."""

    mode: str
    a: str
    b: str | None = None
    x: str | None = None
    ttl: int = DEFAULT_TTL
    tenant: str | None = None
    # Policy rules (policy/): None / "both" / () mean "no rule", as on Binding.
    direction: str = "both"
    max_duration_s: int | None = None
    max_concurrent: int | None = None
    blacklist: tuple[str, ...] = ()
    ext: str | None = None          # AXE (default: allocated, tenants.<t>.ext_digits digits)
    y: str | None = None            # AXYB (default: allocated from the tenant's pool)
    record: bool = False


class Target(NamedTuple):
    """Where a call through a binding goes: the new leg sipmask places."""

    callee: str       # the real number leg B dials
    shown: str        # the 700 number leg B's From carries: X, or Y on an AXYB call from A
    direction: str    # the CDR's direction: a_to_b | b_to_a | n_to_a


class Refusal(Enum):
    """Why `target` gives no leg."""

    FORBIDDEN = "forbidden"   # 403 (cause not_allowed): this caller may not use the number
    ASK_EXT = "ask_ext"       # AXE number without an extension: play ext_prompt, read E


def target(binding: Binding, dialled: str, caller: str,
           ext: str | None = None) -> Target | Refusal:
    """The new leg of a call from `caller` to `dialled` (normalised) that `store.route`
    answered with `binding` (`ext`: the extension the caller gave, if any). The one place
    the modes' routing rules live (CONTRACT "Words"):
      AXB   A -> B and B -> A through X; anyone else 403.
      AXN   anyone but A -> A (A calling its own X would loop: 403).
      AXE   anyone with E -> A (n_to_a; A keying its own E: 403); A without E -> B when
            the binding has one (a_to_b); anyone else without E: ASK_EXT.
      AXYB  A dials X -> B, who sees Y (a_to_b); B dials Y -> A, who sees X (b_to_a);
            anything else (A dialling Y, B dialling X, a stranger) 403.
    """
    mode, a, b, x = binding.mode, binding.a, binding.b, binding.x
    if mode == "axb":
        if caller == a and b is not None:
            return Target(b, x, "a_to_b")
        if caller == b:
            return Target(a, x, "b_to_a")
    elif mode == "axn":
        if caller != a:
            return Target(a, x, "n_to_a")
    elif mode == "axe":
        if ext is not None:
            if ext == binding.ext and caller != a:
                return Target(a, x, "n_to_a")
        elif caller == a and b is not None:
            return Target(b, x, "a_to_b")
        else:
            return Refusal.ASK_EXT
    elif mode == "axyb" and b is not None and binding.y is not None:
        if dialled == x and caller == a:
            return Target(b, binding.y, "a_to_b")
        if dialled == binding.y and caller == b:
            return Target(a, x, "b_to_a")
    return Refusal.FORBIDDEN


@dataclass(frozen=True, slots=True)
class PoolRange:
    """A range of X numbers a tenant owns. `source` says who manages it: the config file
    (changed by editing the config) or the store (`sipmask pool add/remove`)."""

    tenant: str
    first: str
    last: str
    source: str                    # "config" | "store"

    @property
    def size(self) -> int:
        return int(self.last) - int(self.first) + 1

    def __contains__(self, x: object) -> bool:
        return isinstance(x, str) and len(x) == numbers.X_LENGTH and self.first <= x <= self.last

    def as_range(self) -> NumberRange:
        return NumberRange(self.first, self.last)


@dataclass(frozen=True, slots=True)
class PoolUsage:
    """A pool range with how many of its Xs carry a binding and how many bindings in all."""

    pool: PoolRange
    xs_used: int
    bindings: int

    def to_json(self) -> dict[str, object]:
        return {"tenant": self.pool.tenant, "range": f"{self.pool.first}-{self.pool.last}",
                "source": self.pool.source, "size": self.pool.size,
                "xs_used": self.xs_used, "bindings": self.bindings}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One append-only audit record: who (tenant, actor), when, what (action on subject).

    `data` holds the record as written (real numbers included); `to_json(masked=True)` is
    what `sipmask audit` prints, with every real number masked (numbers.mask).
    """

    seq: int
    at: float
    tenant: str
    actor: str
    action: str                    # create | update | delete | expire | pool_add | pool_remove
    subject: str                   # binding id or pool range
    data: Mapping[str, object] = field(default_factory=dict)

    def to_json(self, masked: bool = True) -> dict[str, object]:
        data: object = dict(self.data)
        if masked:
            data = json.loads(numbers.mask_text(json.dumps(data)))
        return {"seq": self.seq, "at": iso(self.at), "tenant": self.tenant,
                "actor": self.actor, "action": self.action, "subject": self.subject,
                "data": data}


@dataclass(frozen=True, slots=True)
class HeldBinding:
    """A binding that held an X at a traced moment (issue 14 §3): who created it, and when,
    how and by whom it ended (None: still held)."""

    binding: Binding
    created_by: str | None         # the create audit entry's actor: cli | api | import
    ended_at: float | None         # unbound, or expired (expires_at); None: still held
    ended_by: str | None           # who unbound it (cli | api); None for an expiry
    end_reason: str | None         # "unbind" | "expiry" | None

    def to_json(self) -> dict[str, object]:
        """The binding JSON with real numbers (operator use), and its life."""
        return {**self.binding.to_json(), "created_by": self.created_by,
                "ended_at": iso(self.ended_at), "ended_at_unix": self.ended_at,
                "ended_by": self.ended_by, "end_reason": self.end_reason}


@dataclass(slots=True)
class ImportOutcome:
    """One line of a bulk create: the binding made, or the refusal (field + reason)."""

    line: int
    binding: Binding | None = None
    field: str | None = None
    reason: str | None = None


class BindingStore(Protocol):
    """What the call engine, the CLI and the HTTP API need of the store."""

    # The store key's subkeys (store/crypto.py); recordings are sealed with them too.
    keys: Keyring

    def create(self, *, mode: str, tenant: str | None, a: str, b: str | None = None,
               x: str | None = None, ttl: int = DEFAULT_TTL, actor: str = "cli",
               now: float | None = None, direction: str = "both",
               max_duration_s: int | None = None, max_concurrent: int | None = None,
               blacklist: tuple[str, ...] = (), ext: str | None = None,
               y: str | None = None, record: bool = False) -> Binding:
        """Check every rule and write the binding; X (AXYB: and Y; AXE: the extension) is
        allocated when not given. The policy fields (direction, max_duration_s,
        max_concurrent, blacklist) and `record` are optional."""
        ...

    def create_many(self, requests: Iterable[tuple[int, BindingRequest]], *,
                    actor: str = "import", batch: int = 5000,
                    default_tenant: str | None = None) -> Iterable[ImportOutcome]:
        """Bulk create in batched transactions; yields one outcome per (line, request)."""
        ...

    def get(self, binding_id: str, tenant: str | None = None) -> Binding:
        """RecordNotFound when absent, expired, or another tenant's."""
        ...

    def delete(self, binding_id: str, tenant: str | None = None, actor: str = "cli") -> None:
        ...

    def update_ttl(self, binding_id: str, ttl: int, tenant: str | None = None,
                   actor: str = "cli") -> Binding:
        """New expiry counted from now; ttl 0 means no expiry."""
        ...

    def list(self, tenant: str | None = None, x: str | None = None,
             limit: int = 1000) -> builtins.list[Binding]:
        """Live bindings, by id order (or on one X)."""
        ...

    def route(self, x: str, caller: str, now: float, ext: str | None = None) -> Binding | None:
        """The call path. Normalised number (an X, or an AXYB binding's Y) and caller → the
        live binding for this caller on it; else any live binding on it (so a stranger is
        refused with 403, not 404, and a caller of an AXE number is asked for the
        extension); else None. With `ext` (AXE): the live binding with that extension on
        X, else None. `target()` (above) turns the answer into the new leg."""
        ...

    def sweep(self, now: float, limit: int = 1000) -> int:
        """Delete up to `limit` expired bindings; returns how many. The server calls it
        every store.sweep_interval_s."""
        ...

    def sync_tenants(self, tenants: Mapping[str, TenantConfig]) -> None:
        """Seed config tenants and their pools (config is the source of truth)."""
        ...

    def tenants(self) -> builtins.list[str]:
        ...

    def add_pool(self, tenant: str, pool: str | NumberRange, actor: str = "cli") -> PoolRange:
        ...

    def remove_pool(self, tenant: str, pool: str | NumberRange, actor: str = "cli") -> None:
        ...

    def list_pools(self, tenant: str | None = None) -> builtins.list[PoolUsage]:
        ...

    def audit(self, since: float | None = None, tenant: str | None = None,
              limit: int = 100) -> builtins.list[AuditEntry]:
        """Oldest first from `since`; the last `limit` entries when since is None."""
        ...

    def trace(self, x: str, at: float) -> builtins.list[HeldBinding]:
        """Every binding that held X at `at` (live, or removed within cdr.retention_days),
        oldest first: every AXE binding on X, an AXYB binding by its X or its Y.
        RefusedError naming x or at for a bad value."""
        ...

    def close(self) -> None:
        ...
