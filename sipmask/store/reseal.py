"""Record by record: sealing what a store held in clear, and moving records to a new key
(issue 14 §2). Backend-neutral: each function takes one record (database, key, value) and
returns the records to write in its place; the backend copies a whole store through them.

Why a copy and not a rewrite in place (store/lmdb.py does the copy): a B-tree rewritten in
place keeps what it replaced in places no API reaches: freed pages, the unused middle of
live pages (LMDB moves nodes with memmove and never clears the gap, and a compacting copy
copies pages whole) and, for the route index whose keys held the numbers, the separator
keys of branch pages, which stay after the leaves they came from are gone. A store built
afresh from converted records never held the plaintext at all.

  seal_rows   schema 1 → 2: bindings sealed and their route keys made from the keyed hash
              (the old route index is not copied: its keys are the numbers), audit data,
              CDRs (and their index by binding), the answered-call journal and the event
              outbox sealed.
  rekey_rows  every sealed record opened with the old key and sealed with the new one;
              route keys made with the new index key.
Databases these do not know are copied as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from sipmask.store import codec
from sipmask.store.base import Binding
from sipmask.store.crypto import HEAD, KeyMismatch, Keyring

META_KEY_ID = b"key_id"
META_GENERATION = b"key_generation"
BATCH = 2000                 # source records per transaction of a copy
# The answered-call journal's heartbeat keys (cdr/store.py) start with NUL; call ids never
# do. Their values are doubles, not records.
_JOURNAL_RESERVED = b"\x00"
# Databases whose values are sealed JSON records (before: plain JSON, "{").
JSON_DATABASES = ("cdrs", "calls_up", "outbox")
# Sealed with a clear header and nothing else to redo: reopened and resealed as they are.
_RESEALED = ("audit", "history", *JSON_DATABASES)

Row = tuple[str, bytes, bytes]


def _binding_rows(key: bytes, b: Binding, keys: Keyring) -> list[Row]:
    sealed = codec.encode_binding(b, keys)
    return [("bindings", key, sealed), *(("route", k, sealed) for k in codec.route_keys(keys, b))]


def seal_rows(db: str, key: bytes, raw: bytes, keys: Keyring) -> list[Row]:
    """A schema 1 record (in clear) as the schema 2 records that replace it."""
    if db == "route":
        return []                        # made again from each binding
    if db == "bindings" and raw[0] != codec.BINDING_SEALED:
        return _binding_rows(key, codec.decode_plain_binding(raw), keys)
    if db == "audit" and raw[0] == codec.AUDIT_PLAIN:
        e = codec.decode_audit(raw, keys)
        return [("audit", key, codec.encode_audit(e.seq, e.at, e.tenant, e.actor, e.action,
                                                  e.subject, dict(e.data), keys))]
    if db in JSON_DATABASES and raw[:1] == b"{" and not (
            db == "calls_up" and key.startswith(_JOURNAL_RESERVED)):
        if db != "cdrs":
            return [(db, key, codec.seal_json(keys, raw))]
        # A CDR is found by its binding for trace: its id is the clear header and the key
        # of an index entry.
        binding_id = json.loads(raw).get("binding_id") or ""
        rows: list[Row] = [(db, key, codec.seal_json(keys, raw, binding_id.encode()))]
        if binding_id:
            rows.append(("cdr_binding", codec.cdr_index_key(binding_id, key), b""))
        return rows
    return [(db, key, raw)]


def rekey_rows(db: str, key: bytes, raw: bytes, old: Keyring, new: Keyring) -> list[Row]:
    """A record sealed with `old` as the records sealed with `new` that replace it."""
    if db == "route":
        return []
    if db == "bindings":
        return _binding_rows(key, codec.decode_binding(raw, old), new)
    if db in _RESEALED and raw[:1] != b"{" and not (
            db == "calls_up" and key.startswith(_JOURNAL_RESERVED)):
        tag, _, size = HEAD.unpack_from(raw)
        end = HEAD.size + size
        return [(db, key, new.seal(tag, raw[HEAD.size:end], old.open(raw, end)))]
    return [(db, key, raw)]


def key_meta(keys: Keyring) -> dict[bytes, bytes]:
    """What the meta database says of the key a store is sealed with."""
    return {META_KEY_ID: keys.fingerprint.encode(),
            META_GENERATION: str(keys.generation).encode()}


def check_key(meta: Mapping[bytes, bytes | None], keys: Keyring, key_file: object) -> None:
    """KeyMismatch naming store.key_file when `keys` is not the key the store is sealed
    with (by fingerprint: the key itself is never in a message)."""
    sealed_with = (meta.get(META_KEY_ID) or b"").decode()
    if sealed_with and sealed_with != keys.fingerprint:
        raise KeyMismatch(f"store.key_file does not match this store: {key_file} is key "
                          f"{keys.fingerprint}, the store is sealed with key {sealed_with} "
                          "(after `sipmask store rekey`, point store.key_file at the new key)")
