"""The call detail record: one per call attempt (CONTRACT.md "Call detail records").

`direction` by mode (store/base.py `target` decides it): AXB a_to_b / b_to_a; AXN n_to_a;
AXE n_to_a for a caller who keyed the extension and reached A, a_to_b for A reaching B;
AXYB a_to_b when A dialled X (B saw Y), b_to_a when B dialled Y (A saw X). `recording` is
the recording's file name (store/recordings.py: `<call id>.wav` under recording.dir/<tenant>/)
or null.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from sipmask import numbers, times

CDR_VERSION = 1
# One encoder for every record: json.dumps with options builds a new JSONEncoder on each
# call (as store/codec.py's _JSON); the output is the same.
_JSON = json.JSONEncoder(separators=(",", ":"))

DIRECTIONS = ("a_to_b", "b_to_a", "n_to_a")
RELEASE_SIDES = ("caller", "callee", "sipmask")
CAUSES = ("none", "no_binding", "not_allowed", "blacklist", "rate_limited", "callee_failed",
          "timeout", "trunk_unreachable")


@dataclass(frozen=True)
class Cdr:
    call_id: str
    tenant: str
    binding_id: str | None
    x: str
    caller: str
    callee: str | None
    direction: str | None
    invite_at: float
    ring_at: float | None
    answer_at: float | None
    end_at: float | None
    duration_s: float
    release_side: str | None
    sip_status: int | None
    unconnected_cause: str
    recording: str | None = None     # the recording's file name (a recorded, answered call)

    def to_json(self, *, mask: bool = False) -> dict[str, Any]:
        """JSON shape: times as ISO-8601 UTC, numbers as they are (or masked for others)."""
        out = asdict(self)
        for key in ("invite_at", "ring_at", "answer_at", "end_at"):
            out[key] = iso(out[key])
        if mask:
            out["caller"] = numbers.mask(self.caller)
            out["callee"] = numbers.mask(self.callee) if self.callee else None
        return out

    def encode(self) -> bytes:
        """Versioned storage encoding: new optional fields can be added without a migration."""
        # Every field is a scalar, so the instance dict (the fields, in their order: the
        # dataclass __init__ sets them so) is what asdict() would build, at a tenth of its
        # cost (two records per answered call, bench/calls.py).
        return _JSON.encode({"v": CDR_VERSION, **vars(self)}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Cdr:
        raw = json.loads(data)
        raw.pop("v", None)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


_FIELD_NAMES = tuple(f.name for f in fields(Cdr))
CSV_COLUMNS = _FIELD_NAMES


def iso(ts: float | None) -> str | None:
    """CDR times carry milliseconds."""
    return times.iso(ts, ms=True)


parse_time = times.parse_time
