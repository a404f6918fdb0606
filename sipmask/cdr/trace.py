"""Trace (issue 14 §3; MIIT requires violations through a 700 number to be traceable): which
binding held X at a moment, with its tenant, parties, who created it and when, when and by
whom it ended, and the calls made through it.

For the operator (and through it the regulator): `sipmask trace X --at TIME` and
`GET /v1/trace?x=…&at=…` with an operator token. Real numbers are shown, across tenants;
that is what the operator token is for, and nothing else answers with them across tenants.
Bindings come from the store (live ones and its history, kept cdr.retention_days), calls
from the CDR log's index by binding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sipmask.cdr.record import Cdr
from sipmask.store.base import BindingStore, HeldBinding

# The most CDRs one trace answers with (a binding with no expiry can carry a great many
# calls); past it the answer says so ("cdrs_truncated") and `sipmask cdr export` has all.
MAX_CDRS = 10_000

CdrsOf = Callable[[str, int | None], list[Cdr]]    # (binding id, limit) -> its calls


@dataclass(frozen=True, slots=True)
class Trace:
    bindings: list[HeldBinding]
    cdrs: list[Cdr]
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        """CONTRACT: {bindings, cdrs}, real numbers shown (operator use)."""
        out: dict[str, Any] = {"bindings": [h.to_json() for h in self.bindings],
                               "cdrs": [c.to_json() for c in self.cdrs]}
        if self.truncated:
            out["cdrs_truncated"] = True
        return out


def trace(store: BindingStore, cdrs_of: CdrsOf | None, x: str, at: float,
          limit: int | None = MAX_CDRS) -> Trace:
    """RefusedError naming x or at for a bad value (from the store)."""
    held = store.trace(x, at)
    calls: list[Cdr] = []
    truncated = False
    if cdrs_of is not None:
        for h in held:
            room = None if limit is None else limit - len(calls) + 1
            found = cdrs_of(h.binding.id, room)
            calls.extend(found)
            if limit is not None and len(calls) > limit:
                truncated = True
                break
    calls.sort(key=lambda c: (c.invite_at, c.call_id))
    return Trace(held, calls[:limit] if limit is not None else calls, truncated)
