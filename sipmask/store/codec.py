"""Byte encodings of store records and keys. Every value starts with a version byte.

A binding is read on every call, so its encoding is cheap to decode. Version 2 (written
now): the version byte, created_at and expires_at as two big-endian doubles (NaN: no
expiry) read with one struct.unpack_from, then the core fields joined by the ASCII unit
separator (0x1F, which no field can hold), then a JSON object with the optional policy
fields that are set (empty when none). Parsing float text cost a third of the call path's
lookup, which is why the times are binary. Version 1 (times as text) is still read, so a
store written before keeps routing. A reader ignores JSON keys it does not know, so records
written by a newer sipmask with more optional fields still route here; a record with a
newer *version byte* is refused with a clear error instead.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

from sipmask.entropy import token_bytes
from sipmask.errors import StoreError
from sipmask.store.base import AuditEntry, Binding, PoolRange

SCHEMA_VERSION = 1
BINDING_V1 = 1
BINDING_V2 = 2
SEP = "\x1f"

_U64 = struct.Struct(">Q")
_TIMES = struct.Struct(">dd")          # created_at, expires_at (NaN: no expiry)
_TIMES_END = 1 + _TIMES.size
_NO_EXPIRY = float("nan")
_USE = struct.Struct(">cI")
# One encoder for all: json.dumps with options builds a new encoder on every call.
_JSON = json.JSONEncoder(separators=(",", ":"))
_make_binding = Binding._make


class RecordVersionError(StoreError):
    """A record written by a newer sipmask in a layout this version cannot read."""


def encode_binding(b: Binding) -> bytes:
    """The binding record (version 2, the module docstring): the one place its bytes are
    laid out, for create, update and the bulk import alike."""
    ext: dict[str, Any] = {}
    if b.direction != "both":
        ext["direction"] = b.direction
    if b.max_duration_s is not None:
        ext["max_duration_s"] = b.max_duration_s
    if b.max_concurrent is not None:
        ext["max_concurrent"] = b.max_concurrent
    if b.blacklist:
        ext["blacklist"] = list(b.blacklist)
    times = _TIMES.pack(b.created_at, _NO_EXPIRY if b.expires_at is None else b.expires_at)
    fields = (b.id, b.mode, b.tenant, b.x, b.a, b.b or "", _JSON.encode(ext) if ext else "")
    return b"\x02" + times + SEP.join(fields).encode()


def new_ids(now: float, count: int) -> list[str]:
    """`count` ids as new_id(now) makes them, from one draw of random bytes."""
    head = f"{max(0, int(now * 1000)):011x}"
    tails = os.urandom(7 * count).hex()
    return [head + tails[i + 1:i + 14] for i in range(0, 14 * count, 14)]


def new_id(now: float) -> str:
    """A binding id: the creation time in ms (11 hex digits) then 52 random bits (13 hex).

    Time first so new ids land at the end of the `bindings` B-tree instead of on a random
    page: a bulk import then dirties a few pages per batch rather than one per binding
    (on this machine raw puts went from ~47,000/s to ~80,000/s at 300,000 bindings), and
    listing by id lists by creation time. The random part keeps ids unguessable and
    clashes all but impossible; the writer still refuses to overwrite one."""
    return f"{max(0, int(now * 1000)):011x}{token_bytes(7).hex()[1:]}"


def new_binding(binding_id: str, mode: str, tenant: str, x: str, a: str, b: str | None,
                created_at: float, expires_at: float | None) -> Binding:
    """A Binding with no policy rules set, built the way decode_binding builds one (the
    bulk import makes one per line): NamedTuple's `_make` fills the tuple in C and checks
    its length, where the generated keyword `__new__` costs three times as much."""
    return _make_binding((binding_id, mode, tenant, x, a, b, created_at, expires_at,
                          "both", None, None, ()))


def decode_binding(raw: bytes) -> Binding:
    # The call path decodes a binding per INVITE: one struct read for the times, one split
    # for the text fields, and Binding._make fills the NamedTuple in C.
    version = raw[0]
    if version == BINDING_V2:
        created, expires = _TIMES.unpack_from(raw, 1)
        bid, mode, tenant, x, a, b, ext = raw[_TIMES_END:].decode().split(SEP)
        if not ext:   # no policy fields: the common case
            return _make_binding((
                bid, mode, tenant, x, a, b or None, created,
                expires if expires == expires else None,   # NaN: no expiry
                "both", None, None, ()))
        core = (bid, mode, tenant, x, a, b or None, created,
                expires if expires == expires else None)
    elif version == BINDING_V1:
        bid, mode, tenant, x, a, b, created_s, expires_s, ext = raw[1:].decode().split(SEP)
        core = (bid, mode, tenant, x, a, b or None, float(created_s),
                float(expires_s) if expires_s else None)
    else:
        raise RecordVersionError(f"binding record version {version} is newer than this "
                                 "sipmask")
    more: dict[str, Any] = json.loads(ext) if ext else {}
    return _make_binding((*core, more.get("direction", "both"), more.get("max_duration_s"),
                          more.get("max_concurrent"), tuple(more.get("blacklist", ()))))


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
                 data: Mapping[str, object] | str) -> bytes:
    """The audit record: the one place its bytes are laid out. Fixed fields joined like a
    binding (an import writes one entry per binding, so this is on the bulk path); only
    the free-form `data` is JSON, given as a mapping or as JSON text already made
    (binding_summary)."""
    text = data if isinstance(data, str) else _JSON.encode(data)
    return b"\x01" + SEP.join((str(seq), repr(at), tenant, actor, action, subject,
                                text)).encode()


def binding_summary(b: Binding) -> str:
    """The audit entry's JSON of a binding (mode, x, a, b, expires_at). Numbers and modes are
    plain ASCII letters and digits, which JSON writes as they are, so the text is put
    together directly: the encoder's own work was a tenth of a bulk import's time."""
    other = b.b or ""
    if (b.mode + b.x + b.a + other).isascii() and (b.mode + b.x + b.a + other).isalnum():
        b_json = f'"{other}"' if b.b is not None else "null"
        expires = "null" if b.expires_at is None else repr(b.expires_at)
        return (f'{{"mode":"{b.mode}","x":"{b.x}","a":"{b.a}","b":{b_json},'
                f'"expires_at":{expires}}}')
    return _JSON.encode({"mode": b.mode, "x": b.x, "a": b.a, "b": b.b,
                         "expires_at": b.expires_at})


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
