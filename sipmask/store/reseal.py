"""Sealing what a store held in clear, and moving a store to a new key (issue 14 §2).

Both walk every database that holds real numbers, a batch of records per transaction, and
rewrite each record that is not yet in the wanted form. Each record says which form it is
in (its version byte; a sealed one also its key generation), so a walk cut short by a
crash or kill -9 is simply run again: committed batches are skipped record by record, the
batch that was cut never happened (one transaction), and nothing is done twice.

  seal_plaintext  schema 1 → 2, run when a store is opened: bindings sealed and their route
                  keys rebuilt from the keyed hash, audit data, CDRs (and their index by
                  binding), the answered-call journal and the event outbox sealed.
  rekey           every sealed record opened with the store's key and sealed with a new one,
                  route keys rebuilt with the new index key (`sipmask store rekey`).

The meta database says where a store is (backend-neutral: any Txn):
  key_id          the fingerprint of the key that seals the store (crypto.Keyring)
  key_generation  the generation byte its records carry
  sealing         present while records from before sealing may remain
  rekey_to        "<fingerprint> <generation>" while a rekey runs
  compact         present while freed pages may still hold what a walk replaced (LMDB
                  compacts its file when it is opened alone, store/lmdb.py)
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sipmask.errors import StoreError
from sipmask.store import codec
from sipmask.store.crypto import HEAD, KeyMismatch, Keyring
from sipmask.store.rules import RuleStore, Txn

META_KEY_ID = b"key_id"
META_GENERATION = b"key_generation"
META_SEALING = b"sealing"
META_REKEY = b"rekey_to"
META_COMPACT = b"compact"
BATCH = 2000                 # records per transaction: one fsync per batch
# The answered-call journal's heartbeat keys (cdr/store.py) start with NUL; call ids never
# do. Their values are doubles, not records.
_JOURNAL_RESERVED = b"\x00"
# Databases whose values are sealed JSON records (before: plain JSON, "{").
JSON_DATABASES = ("cdrs", "calls_up", "outbox")

Progress = Callable[[str, int], None]     # (database, records looked at so far)
Convert = Callable[[Txn, bytes, bytes], bool]


class RekeyError(StoreError):
    """A rekey that cannot go ahead (the same key, another rekey half done)."""


def _walk(store: RuleStore, db: str, convert: Convert, progress: Progress | None,
          batch: int) -> int:
    """Every record of `db`, `batch` per write transaction; `convert(txn, key, value)` says
    whether it rewrote one. Rows are read before any is rewritten (convert may write to
    `db` and to other databases). Returns how many records were rewritten."""
    after: bytes | None = None
    seen = changed = 0
    while True:
        def run(txn: Txn, start: bytes | None = after) -> tuple[bytes | None, int, int]:
            rows: list[tuple[bytes, bytes]] = []
            for key, value in txn.scan(db, start or b""):
                if start is not None and key <= start:
                    continue
                rows.append((bytes(key), bytes(value)))
                if len(rows) >= batch:
                    break
            done = sum(1 for key, value in rows if convert(txn, key, value))
            return (rows[-1][0] if rows else None), len(rows), done
        after, count, done = store.write(run)
        seen += count
        changed += done
        if progress is not None and count:
            progress(db, seen)
        if after is None or count < batch:
            return changed


# -- schema 1 → 2: seal what was in clear ----------------------------------------------------
def _seal_binding(keys: Keyring) -> Convert:
    def convert(txn: Txn, key: bytes, raw: bytes) -> bool:
        if raw[0] == codec.BINDING_SEALED:
            return False
        b = codec.decode_plain_binding(raw)
        for old in codec.plain_route_keys(b):
            if txn.get("route", old) is not None:
                txn.delete("route", old)
        sealed = codec.encode_binding(b, keys)
        txn.put("bindings", key, sealed)
        for new in codec.route_keys(keys, b):
            txn.put("route", new, sealed)
        return True
    return convert


def _drop_plain_route(txn: Txn, key: bytes, raw: bytes) -> bool:
    # Left after the bindings were sealed: a route entry of a binding no longer stored.
    if raw[0] == codec.BINDING_SEALED:
        return False
    txn.delete("route", key)
    return True


def _seal_audit(keys: Keyring) -> Convert:
    def convert(txn: Txn, key: bytes, raw: bytes) -> bool:
        if raw[0] != codec.AUDIT_PLAIN:
            return False
        e = codec.decode_audit(raw, keys)
        txn.put("audit", key, codec.encode_audit(e.seq, e.at, e.tenant, e.actor, e.action,
                                                 e.subject, dict(e.data), keys))
        return True
    return convert


def _seal_json(keys: Keyring, db: str) -> Convert:
    def convert(txn: Txn, key: bytes, raw: bytes) -> bool:
        if raw[:1] != b"{" or key.startswith(_JOURNAL_RESERVED):
            return False
        clear = b""
        if db == "cdrs":
            # A CDR is found by its binding for trace: its id is the clear header.
            binding_id = json.loads(raw).get("binding_id")
            if binding_id:
                clear = binding_id.encode()
                txn.put("cdr_binding", codec.cdr_index_key(binding_id, key), b"")
        txn.put(db, key, codec.seal_json(keys, raw, clear))
        return True
    return convert


def seal_plaintext(store: RuleStore, keys: Keyring, progress: Progress | None = None,
                   batch: int = BATCH) -> int:
    """Seal every record a store held in clear (meta `sealing` says one may remain);
    returns how many were rewritten. Idempotent and resumable (module docstring)."""
    changed = _walk(store, "bindings", _seal_binding(keys), progress, batch)
    changed += _walk(store, "route", _drop_plain_route, progress, batch)
    changed += _walk(store, "audit", _seal_audit(keys), progress, batch)
    for db in JSON_DATABASES:
        changed += _walk(store, db, _seal_json(keys, db), progress, batch)

    def finish(txn: Txn) -> None:
        txn.delete("meta", META_SEALING)
        txn.put("meta", META_COMPACT, b"1")   # freed pages still hold the plaintext
    store.write(finish)
    return changed


# -- rekey: every sealed record to a new key -------------------------------------------------
def _rekey_binding(old: Keyring, new: Keyring) -> Convert:
    def convert(txn: Txn, key: bytes, raw: bytes) -> bool:
        if raw[1] == new.generation:
            return False
        b = codec.decode_binding(raw, old)
        for stale in codec.route_keys(old, b):
            if txn.get("route", stale) is not None:
                txn.delete("route", stale)
        sealed = codec.encode_binding(b, new)
        txn.put("bindings", key, sealed)
        for fresh in codec.route_keys(new, b):
            txn.put("route", fresh, sealed)
        return True
    return convert


def _drop_stale_route(new: Keyring) -> Convert:
    def convert(txn: Txn, key: bytes, raw: bytes) -> bool:
        if raw[1] == new.generation:
            return False
        txn.delete("route", key)
        return True
    return convert


def _reseal(old: Keyring, new: Keyring, db: str) -> Convert:
    """Any sealed record: the same tag and clear header, the plaintext sealed anew."""
    def convert(txn: Txn, key: bytes, raw: bytes) -> bool:
        if (key.startswith(_JOURNAL_RESERVED) and db == "calls_up") or raw[:1] == b"{":
            return False
        if raw[1] == new.generation:
            return False
        tag, _, size = HEAD.unpack_from(raw)
        end = HEAD.size + size
        txn.put(db, key, new.seal(tag, raw[HEAD.size:end], old.open(raw, end)))
        return True
    return convert


def rekey_target(store: RuleStore) -> str | None:
    """The "<fingerprint> <generation>" of a rekey left half done, or None."""
    raw = store.read(lambda txn: txn.get("meta", META_REKEY))
    return None if raw is None else raw.decode()


def rekey(store: RuleStore, new_master: bytes, progress: Progress | None = None,
          batch: int = BATCH) -> Keyring:
    """Seal every record of `store` with the key `new_master` instead of `store.keys`, and
    rebuild the route keys with its index key. Returns the new Keyring (also store.keys).
    Running it again with the same new key after a crash finishes the job."""
    old = store.keys
    target = rekey_target(store)
    generation = old.generation % 255 + 1
    if target is not None:
        generation = int(target.split()[1])
    new = Keyring(new_master, generation)
    if new.fingerprint == old.fingerprint:
        raise RekeyError(f"the new key is the store's own key ({old.fingerprint})")
    wanted = f"{new.fingerprint} {generation}"
    if target is not None and target.split()[0] != new.fingerprint:
        raise RekeyError(f"a rotation to key {target.split()[0]} was left half done: run "
                         "rekey again with that key file")
    if target is None:
        store.write(lambda txn: txn.put("meta", META_REKEY, wanted.encode()))
    _walk(store, "bindings", _rekey_binding(old, new), progress, batch)
    _walk(store, "route", _drop_stale_route(new), progress, batch)
    for db in ("audit", "history", *JSON_DATABASES):
        _walk(store, db, _reseal(old, new, db), progress, batch)

    def finish(txn: Txn) -> None:
        txn.put("meta", META_KEY_ID, new.fingerprint.encode())
        txn.put("meta", META_GENERATION, str(new.generation).encode())
        txn.delete("meta", META_REKEY)
        txn.put("meta", META_COMPACT, b"1")   # freed pages still hold the old ciphertext
    store.write(finish)
    store.keys = new
    return new


# -- which key a store is sealed with ---------------------------------------------------------
def meta_of(store: RuleStore) -> dict[bytes, bytes]:
    def run(txn: Txn) -> dict[bytes, bytes]:
        return {name: value for name in (b"schema_version", META_KEY_ID, META_GENERATION,
                                         META_SEALING, META_REKEY, META_COMPACT)
                if (value := txn.get("meta", name)) is not None}
    return store.read(run)


def check_key(meta: dict[bytes, bytes], keys: Keyring, key_file: object, *,
              rekeying: bool = False) -> None:
    """KeyMismatch naming store.key_file when `keys` is not the key the store is sealed
    with, or when a rekey was left half done (unless this is the rekey resuming)."""
    sealed_with = meta.get(META_KEY_ID, b"").decode()
    target = meta.get(META_REKEY, b"").decode()
    if sealed_with and sealed_with != keys.fingerprint:
        if target.split()[:1] == [keys.fingerprint]:
            raise KeyMismatch(f"store.key_file: {key_file} is key {keys.fingerprint}, to which "
                              f"a rotation from key {sealed_with} was left half done: run "
                              "`sipmask store rekey --new-key` with it again, store.key_file "
                              "still naming the old key")
        raise KeyMismatch(f"store.key_file does not match this store: {key_file} is key "
                          f"{keys.fingerprint}, the store is sealed with key {sealed_with} "
                          "(after `sipmask store rekey`, point store.key_file at the new key)")
    if target and not rekeying:
        raise KeyMismatch(f"a rotation to key {target.split()[0]} was left half done: run "
                          "`sipmask store rekey --new-key FILE` again with that key file")
