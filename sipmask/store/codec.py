"""Byte encodings of store records and keys. Every value starts with a version byte.

Real numbers are sealed (store/crypto.py, issue 14 §2); X numbers, ids, tenants, times and
actors stay in clear, so the store is still indexed by them. A sealed value is laid out by
Keyring.seal: tag, key generation, the length of the clear header, the clear header, the
nonce and the AES-GCM ciphertext of the rest, with everything before the nonce as its
associated data.

A binding is read on every call, so its encoding is cheap to decode. Version 3 (written
now, sealed): the clear header is created_at and expires_at as two big-endian doubles (NaN:
no expiry); the sealed part is id, mode, tenant, X, a, b and a JSON object with the
optional policy fields that are set (empty when none), joined by the ASCII unit separator
(0x1F, which no field can hold). One open and one split: the call path pays one AES-GCM
call on top of what it paid before. Parsing float text cost a third of the call path's
lookup, which is why the times are binary. Versions 1 (times as text) and 2 (version 3's
layout, all in clear) are what stores held before numbers were sealed: they are still
read, so the copy on start (store/reseal.py) can seal them, and version 2 is the plaintext
sealed inside a binding's history record. A reader ignores JSON keys it does
not know, so records written by a newer sipmask with more optional fields still route here;
a record with a newer *version byte* is refused with a clear error instead.

Route keys: X, then for AXB the keyed hash of X and the party's number (Keyring.index), so
pair uniqueness and the call-path lookup stay one get without a number in any key. Issue 15
adds two modes on the same index: an AXE binding holds X + hash(A) (A calling X) and
X + "#" + its extension (anyone keying E; the extension is not a real number, and in clear
the free extensions of an X are one ordered scan); an AXYB binding holds X + hash(A) (A
dials X) and Y + hash(B) (B dials Y), so a lookup by either number is the same one get.
The optional fields ext, y and record travel in the binding's JSON object like the policy
fields: a binding without them is encoded exactly as before.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple

from sipmask.entropy import token_bytes
from sipmask.errors import StoreError
from sipmask.store.base import AuditEntry, Binding, PoolRange
from sipmask.store.crypto import HEAD, Keyring

# 2: real numbers sealed, route keys hashed, binding history kept (issue 14). A store at 1
# is migrated when it is opened (store/reseal.py).
SCHEMA_VERSION = 2
BINDING_V1 = 1
BINDING_V2 = 2
BINDING_SEALED = 3
AUDIT_PLAIN = 1
AUDIT_SEALED = 2
SEALED_JSON = 2          # CDRs, the answered-call journal, events (before: plain JSON, "{")
HISTORY_SEALED = 1
SEP = "\x1f"
_SEP_BYTES = b"\x1f"

_U64 = struct.Struct(">Q")
_TIMES = struct.Struct(">dd")          # created_at, expires_at (NaN: no expiry)
_TIMES_END = 1 + _TIMES.size
_CLEAR_AT = HEAD.size
_SEALED_AT = HEAD.size + _TIMES.size   # a binding's clear header is its times, nothing else
_ENDED = struct.Struct(">dd")          # history: removed_at, held until
_NO_EXPIRY = float("nan")
_USE = struct.Struct(">cI")
# One encoder for all: json.dumps with options builds a new encoder on every call.
_JSON = json.JSONEncoder(separators=(",", ":"))
_make_binding = Binding._make


class RecordVersionError(StoreError):
    """A record written by a newer sipmask in a layout this version cannot read."""


def _ext(b: Binding) -> str:
    ext: dict[str, Any] = {}
    if b.direction != "both":
        ext["direction"] = b.direction
    if b.max_duration_s is not None:
        ext["max_duration_s"] = b.max_duration_s
    if b.max_concurrent is not None:
        ext["max_concurrent"] = b.max_concurrent
    if b.blacklist:
        ext["blacklist"] = list(b.blacklist)
    if b.ext is not None:
        ext["ext"] = b.ext
    if b.y is not None:
        ext["y"] = b.y
    if b.record:
        ext["record"] = True
    return _JSON.encode(ext) if ext else ""


def _times(b: Binding) -> bytes:
    return _TIMES.pack(b.created_at, _NO_EXPIRY if b.expires_at is None else b.expires_at)


def _fields(b: Binding) -> bytes:
    return f"{b.id}{SEP}{b.mode}{SEP}{b.tenant}{SEP}{b.x}{SEP}{b.a}{SEP}{b.b or ''}{SEP}" \
           f"{_ext(b)}".encode()


def encode_binding(b: Binding, keys: Keyring) -> bytes:
    """The binding record (version 3, the module docstring): the one place its bytes are
    laid out, for create, update and the bulk import alike."""
    return keys.seal(BINDING_SEALED, _times(b), _fields(b))


def encode_plain_binding(b: Binding) -> bytes:
    """Version 2, in clear: what a store held before issue 14, and the plaintext a history
    record seals."""
    return b"\x02" + _times(b) + _fields(b)


def route_key(keys: Keyring, x: str, number: str | None) -> bytes:
    """The route index key: X alone for AXN, else X and the keyed hash of (X, number)."""
    return x.encode() if number is None else x.encode() + keys.index(x, number)


EXT_MARK = b"#"


def ext_key(x: str, ext: str) -> bytes:
    """An AXE binding's extension key: X, "#", the extension's digits. 17 to 24 bytes, so
    never equal to an AXN key (15) or a hashed one (31)."""
    return x.encode() + EXT_MARK + ext.encode()


def ext_prefix(x: str) -> bytes:
    """Every extension key of X starts with this; they sort by extension."""
    return x.encode() + EXT_MARK


def route_keys(keys: Keyring, b: Binding) -> list[bytes]:
    """Every route key of a binding: X for AXN; one per party for AXB; A's and the
    extension's for AXE; A's on X and B's on Y for AXYB."""
    mode = b.mode
    if mode == "axn":
        return [b.x.encode()]
    out = [route_key(keys, b.x, b.a)]
    if mode == "axe":
        if b.ext is not None:
            out.append(ext_key(b.x, b.ext))
    elif mode == "axyb":
        if b.y is not None and b.b is not None:
            out.append(route_key(keys, b.y, b.b))
    elif b.b is not None:
        out.append(route_key(keys, b.x, b.b))
    return out


def plain_route_keys(b: Binding) -> list[bytes]:
    """The route keys a store held before issue 14 (X and the number in clear)."""
    if b.mode == "axn":
        return [b.x.encode()]
    return [(b.x + number).encode() for number in (b.a, b.b) if number is not None]


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
                          "both", None, None, (), None, None, False))


def decode_binding(raw: bytes, keys: Keyring) -> Binding:
    # The call path decodes a binding per INVITE: one struct read for the head and times,
    # one AES-GCM open, two splits, and Binding._make fills the NamedTuple in C.
    if raw[0] != BINDING_SEALED:
        return decode_plain_binding(raw)
    created, expires = _TIMES.unpack_from(raw, _CLEAR_AT)
    bid, mode, tenant, x, a, b, ext = keys.open(raw, _SEALED_AT).decode().split(SEP)
    if not ext:   # no policy fields: the common case
        return _make_binding((bid, mode, tenant, x, a, b or None, created,
                              expires if expires == expires else None,   # NaN: no expiry
                              "both", None, None, (), None, None, False))
    return _with_ext((bid, mode, tenant, x, a, b or None, created,
                      expires if expires == expires else None), ext)


def _with_ext(core: tuple[Any, ...], ext: str) -> Binding:
    more: dict[str, Any] = json.loads(ext) if ext else {}
    return _make_binding((*core, more.get("direction", "both"), more.get("max_duration_s"),
                          more.get("max_concurrent"), tuple(more.get("blacklist", ())),
                          more.get("ext"), more.get("y"), more.get("record", False) is True))


def binding_live(raw: bytes, now: float) -> bool:
    """Binding.live(now) of an encoded binding, from its clear times (no AES-GCM open)."""
    if raw[0] != BINDING_SEALED:
        return decode_plain_binding(raw).live(now)
    expires: float = _TIMES.unpack_from(raw, _CLEAR_AT)[1]
    return expires != expires or now < expires     # NaN: no expiry


def decode_plain_binding(raw: bytes) -> Binding:
    """Versions 1 and 2 (in clear): a store not yet migrated, a history record's plaintext."""
    version = raw[0]
    if version == BINDING_V2:
        created, expires = _TIMES.unpack_from(raw, 1)
        bid, mode, tenant, x, a, b, ext = raw[_TIMES_END:].decode().split(SEP)
        core: tuple[Any, ...] = (bid, mode, tenant, x, a, b or None, created,
                                 expires if expires == expires else None)
    elif version == BINDING_V1:
        bid, mode, tenant, x, a, b, created_s, expires_s, ext = raw[1:].decode().split(SEP)
        core = (bid, mode, tenant, x, a, b or None, float(created_s),
                float(expires_s) if expires_s else None)
    else:
        raise RecordVersionError(f"binding record version {version} is newer than this "
                                 "sipmask")
    return _with_ext(core, ext)


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
                 data: Mapping[str, object] | str, keys: Keyring) -> bytes:
    """The audit record: the one place its bytes are laid out. The fixed fields are its
    clear header, joined like a binding's (an import writes one entry per binding, so this
    is on the bulk path); the free-form `data`, which holds the numbers, is sealed JSON,
    given as a mapping or as JSON text already made (binding_summary)."""
    text = data if isinstance(data, str) else _JSON.encode(data)
    clear = f"{seq}{SEP}{at!r}{SEP}{tenant}{SEP}{actor}{SEP}{action}{SEP}{subject}"
    return keys.seal(AUDIT_SEALED, clear.encode(), text.encode())


def binding_summary(b: Binding) -> str:
    """The audit entry's JSON of a binding (mode, x, a, b, expires_at; and ext, y, record
    when set). Numbers and modes are plain ASCII letters and digits, which JSON writes as
    they are, so the text is put together directly: the encoder's own work was a tenth of
    a bulk import's time."""
    other = b.b or ""
    if b.ext is not None or b.y is not None or b.record:
        extra: dict[str, Any] = {"mode": b.mode, "x": b.x, "a": b.a, "b": b.b,
                                 "expires_at": b.expires_at}
        if b.ext is not None:
            extra["ext"] = b.ext
        if b.y is not None:
            extra["y"] = b.y
        if b.record:
            extra["record"] = True
        return _JSON.encode(extra)
    if (b.mode + b.x + b.a + other).isascii() and (b.mode + b.x + b.a + other).isalnum():
        b_json = f'"{other}"' if b.b is not None else "null"
        expires = "null" if b.expires_at is None else repr(b.expires_at)
        return (f'{{"mode":"{b.mode}","x":"{b.x}","a":"{b.a}","b":{b_json},'
                f'"expires_at":{expires}}}')
    return _JSON.encode({"mode": b.mode, "x": b.x, "a": b.a, "b": b.b,
                         "expires_at": b.expires_at})


class AuditHead(NamedTuple):
    """An audit entry's clear fields: enough to find an entry without opening it."""

    seq: int
    at: float
    tenant: str
    actor: str
    action: str
    subject: str


def audit_head(raw: bytes) -> AuditHead:
    if raw[0] == AUDIT_SEALED:
        size = HEAD.unpack_from(raw)[2]
        text = raw[_CLEAR_AT:_CLEAR_AT + size].decode()
    elif raw[0] == AUDIT_PLAIN:
        text = SEP.join(raw[1:].decode().split(SEP, 6)[:6])
    else:
        raise RecordVersionError(f"audit record version {raw[0]} is newer than this sipmask")
    seq, at, tenant, actor, action, subject = text.split(SEP)
    return AuditHead(int(seq), float(at), tenant, actor, action, subject)


def decode_audit(raw: bytes, keys: Keyring) -> AuditEntry:
    head = audit_head(raw)
    if raw[0] == AUDIT_SEALED:
        data = keys.open(raw, _CLEAR_AT + HEAD.unpack_from(raw)[2])
    else:   # version 1, in clear: a store not yet migrated
        data = raw[1:].split(_SEP_BYTES, 6)[6]
    return AuditEntry(*head, json.loads(data))


# -- sealed JSON: CDRs, the answered-call journal, events ------------------------------------
def seal_json(keys: Keyring, plain: bytes, clear: bytes = b"") -> bytes:
    """A JSON record sealed whole; `clear` is what an index needs of it (a CDR's binding
    id). Records from before sealing are plain JSON and start with "{"."""
    return keys.seal(SEALED_JSON, clear, plain)


def open_json(keys: Keyring, raw: bytes) -> bytes:
    """The JSON text of a sealed record, or of a plain one not yet migrated."""
    if raw[:1] == b"{":
        return raw
    if raw[0] != SEALED_JSON:
        raise RecordVersionError(f"record version {raw[0]} is newer than this sipmask")
    return keys.open(raw, _CLEAR_AT + HEAD.unpack_from(raw)[2])


def sealed_clear(raw: bytes) -> bytes:
    """The clear header of a sealed record (b"" for a plain one)."""
    if raw[:1] == b"{":
        return b""
    size = HEAD.unpack_from(raw)[2]
    return raw[_CLEAR_AT:_CLEAR_AT + size]


def cdr_index_key(binding_id: str, cdr_key: bytes) -> bytes:
    """The CDR-by-binding index (trace): binding id, US, the CDR's own key (time first)."""
    return binding_id.encode() + _SEP_BYTES + cdr_key


def cdr_index_prefix(binding_id: str) -> bytes:
    return binding_id.encode() + _SEP_BYTES


# -- binding history: what held X, kept after unbind or expiry (issue 14 §3) ----------------
class Ended(NamedTuple):
    binding: Binding
    removed_at: float       # when the record left the live bindings
    until: float            # when it stopped holding X: removal or expiry, whichever first
    actor: str              # who removed it (cli, api, sweep, …)
    action: str             # delete | expire


def history_key(b: Binding, number: str | None = None) -> bytes:
    """X (or another number the binding held: an AXYB binding's Y), then the creation time
    (ms), then the id: `trace` walks one number in time order."""
    return ((number or b.x).encode() + _U64.pack(max(0, int(b.created_at * 1000)))
            + b.id.encode())


def history_keys(b: Binding) -> list[bytes]:
    """One history key per 700 number the binding held, so trace finds it by any."""
    return [history_key(b, number) for number in b.held_numbers()]


def history_x_prefix(x: str) -> bytes:
    return x.encode()


def history_created_ms(key: bytes, x: str) -> int:
    ms: int = _U64.unpack_from(key, len(x.encode()))[0]
    return ms


def encode_history(b: Binding, removed_at: float, actor: str, action: str,
                   keys: Keyring) -> bytes:
    until = removed_at if b.expires_at is None else min(removed_at, b.expires_at)
    clear = _ENDED.pack(removed_at, until) + f"{actor}{SEP}{action}".encode()
    return keys.seal(HISTORY_SEALED, clear, encode_plain_binding(b))


def history_until(raw: bytes) -> float:
    until: float = _ENDED.unpack_from(raw, _CLEAR_AT)[1]
    return until


def decode_history(raw: bytes, keys: Keyring) -> Ended:
    if raw[0] != HISTORY_SEALED:
        raise RecordVersionError(f"history record version {raw[0]} is newer than this "
                                 "sipmask")
    size = HEAD.unpack_from(raw)[2]
    removed_at, until = _ENDED.unpack_from(raw, _CLEAR_AT)
    actor, action = raw[_CLEAR_AT + _ENDED.size:_CLEAR_AT + size].decode().split(SEP)
    binding = decode_plain_binding(keys.open(raw, _CLEAR_AT + size))
    return Ended(binding, removed_at, until, actor, action)


def history_end_key(until: float, key: bytes) -> bytes:
    """The history sweep's index: the end time (ms), then the history key."""
    return _U64.pack(max(0, int(until * 1000))) + key


def expiry_key(expires_at: float, binding_id: str) -> bytes:
    return _U64.pack(max(0, int(expires_at * 1000))) + binding_id.encode()


def expiry_ms(key: bytes) -> int:
    ms: int = _U64.unpack_from(key)[0]
    return ms


_USE_FLAGS = {"axn": b"n", "axe": b"e"}       # AXB and AXYB (pairs) share b"b"
_USE_MODES = {b"n": "axn", b"e": "axe"}


def encode_use(mode: str, count: int) -> bytes:
    """Per-number use: which kind of binding the number serves (AXN takes it whole, AXE
    shares it by extension, pairs of AXB and AXYB share it by caller) and how many
    bindings hold it."""
    return _USE.pack(_USE_FLAGS.get(mode, b"b"), count)


def decode_use(raw: bytes) -> tuple[str, int]:
    """(kind, count); the kind is "axn", "axe" or "axb" (any pair mode)."""
    flag, count = _USE.unpack(raw)
    return _USE_MODES.get(flag, "axb"), count


def u64(n: int) -> bytes:
    return _U64.pack(n)


def from_u64(raw: bytes) -> int:
    n: int = _U64.unpack(raw)[0]
    return n
