"""Byte encodings of store records and keys. Every value starts with a version byte.

A binding is read on every call, so its encoding is cheap to decode: a version byte, then
the core fields joined by the ASCII unit separator (0x1F, which no field can hold), then a
JSON object with the optional policy fields that are set (empty when none). A reader ignores
keys it does not know, so records written by a newer sipmask with more optional fields still
route here; a record with a newer *version byte* is refused with a clear error instead.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

from sipmask.errors import StoreError
from sipmask.store.base import AuditEntry, Binding, PoolRange

SCHEMA_VERSION = 1
BINDING_V1 = 1
SEP = "\x1f"

_U64 = struct.Struct(">Q")
_USE = struct.Struct(">cI")
_OPTIONAL = ("direction", "max_duration_s", "max_concurrent", "blacklist")
# One encoder for all: json.dumps with options builds a new encoder on every call.
_JSON = json.JSONEncoder(separators=(",", ":"))
_new = object.__new__
_set = object.__setattr__


class RecordVersionError(StoreError):
    """A record written by a newer sipmask in a layout this version cannot read."""


def encode_binding(b: Binding) -> bytes:
    ext: dict[str, Any] = {}
    if b.direction != "both":
        ext["direction"] = b.direction
    if b.max_duration_s is not None:
        ext["max_duration_s"] = b.max_duration_s
    if b.max_concurrent is not None:
        ext["max_concurrent"] = b.max_concurrent
    if b.blacklist:
        ext["blacklist"] = list(b.blacklist)
    fields = (b.id, b.mode, b.tenant, b.x, b.a, b.b or "", repr(b.created_at),
              "" if b.expires_at is None else repr(b.expires_at),
              _JSON.encode(ext) if ext else "")
    return b"\x01" + SEP.join(fields).encode()


def new_binding(binding_id: str, mode: str, tenant: str, x: str, a: str, b: str | None,
                created_at: float, expires_at: float | None) -> Binding:
    """A Binding with no policy rules set, built the way decode_binding builds one (the
    bulk import makes one per line; the frozen dataclass __init__ costs three times this)."""
    binding: Binding = _new(Binding)
    _set(binding, "__dict__", {"id": binding_id, "mode": mode, "tenant": tenant, "x": x,
                               "a": a, "b": b, "created_at": created_at,
                               "expires_at": expires_at})
    return binding


def decode_binding(raw: bytes) -> Binding:
    if raw[0] != BINDING_V1:
        raise RecordVersionError(f"binding record version {raw[0]} is newer than this sipmask")
    bid, mode, tenant, x, a, b, created, expires, ext = raw[1:].decode().split(SEP)
    # The call path decodes a binding per INVITE. Filling the frozen dataclass's __dict__ in
    # one step costs a third of its generated __init__, and the optional policy fields left
    # out read their defaults from the class (dataclass defaults are class attributes).
    fields: dict[str, Any] = {
        "id": bid, "mode": mode, "tenant": tenant, "x": x, "a": a, "b": b or None,
        "created_at": float(created), "expires_at": float(expires) if expires else None,
    }
    if ext:
        more = json.loads(ext)
        for key in _OPTIONAL:
            if key in more:
                fields[key] = tuple(more[key]) if key == "blacklist" else more[key]
    binding: Binding = _new(Binding)
    _set(binding, "__dict__", fields)
    return binding


def encode_pool(p: PoolRange) -> bytes:
    return b"\x01" + SEP.join((p.tenant, p.first, p.last, p.source)).encode()


def decode_pool(raw: bytes) -> PoolRange:
    if raw[0] != 1:
        raise RecordVersionError(f"pool record version {raw[0]} is newer than this sipmask")
    tenant, first, last, source = raw[1:].decode().split(SEP)[:4]
    return PoolRange(tenant, first, last, source)


def encode_json(obj: dict[str, Any]) -> bytes:
    return b"\x01" + _JSON.encode(obj).encode()


def decode_json(raw: bytes) -> dict[str, Any]:
    if raw[0] != 1:
        raise RecordVersionError(f"record version {raw[0]} is newer than this sipmask")
    out: dict[str, Any] = json.loads(raw[1:])
    return out


def audit_key(at: float, seq: int) -> bytes:
    # Time first so `audit --since` is one seek; seq breaks ties and orders within a tick.
    return _U64.pack(max(0, int(at * 1_000_000))) + _U64.pack(seq)


def encode_audit(seq: int, at: float, tenant: str, actor: str, action: str, subject: str,
                 data: Mapping[str, object]) -> bytes:
    # Fixed fields joined like a binding (an import writes one entry per binding, so this
    # is on the bulk path); only the free-form `data` is JSON.
    return b"\x01" + SEP.join((str(seq), repr(at), tenant, actor, action, subject,
                                _JSON.encode(data))).encode()


def decode_audit(raw: bytes) -> AuditEntry:
    if raw[0] != 1:
        raise RecordVersionError(f"audit record version {raw[0]} is newer than this sipmask")
    seq, at, tenant, actor, action, subject, data = raw[1:].decode().split(SEP, 6)
    return AuditEntry(int(seq), float(at), tenant, actor, action, subject, json.loads(data))


def expiry_key(expires_at: float, binding_id: str) -> bytes:
    return _U64.pack(max(0, int(expires_at * 1000))) + binding_id.encode()


def expiry_ms(key: bytes) -> int:
    ms: int = _U64.unpack_from(key)[0]
    return ms


def encode_use(mode: str, count: int) -> bytes:
    """Per-X use: which mode the X serves and how many bindings it carries."""
    return _USE.pack(b"n" if mode == "axn" else b"b", count)


def decode_use(raw: bytes) -> tuple[str, int]:
    flag, count = _USE.unpack(raw)
    return ("axn" if flag == b"n" else "axb"), count


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(raw: bytes) -> int:
    n: int = _U64.unpack(raw)[0]
    return n
