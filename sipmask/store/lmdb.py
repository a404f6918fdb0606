"""The LMDB store: one environment that the server, the CLI and the API open at once.

Why LMDB: readers never block the writer and see the last commit on their next transaction,
so a running server routes a binding the CLI wrote a moment ago without any signal; writes
are serialised by LMDB's own lock across processes; a committed write is on disk
(sync on commit), so an acknowledged binding survives kill -9. Bulk imports batch many
bindings per commit to pay that fsync once per batch.

The environment is private: its directory 0700, its files 0600, whatever the umask, since
every binding's real numbers are in it; a store made before that (0755/0644) is fixed when
it is opened, as far as the opening user owns it.

The map is a fixed-size mmap: when a write finds it full (MapFullError) we double it and
run the write again; a process that finds the map grown by another (MapResizedError)
adopts the new size and retries.

Real numbers are sealed with the key in `store.key_file` (store/crypto.py). Opening a store:
  - a new store, or one written before sealing (schema 1), takes the key file, which is
    made (32 random bytes, 0600) when missing; a schema 1 store is then sealed in batches
    (store/reseal.py), with progress in the log, resumably after a crash;
  - a sealed store needs the key it was sealed with: a missing key file or another key is
    refused with a message naming store.key_file (nothing is created then);
  - after sealing or a rekey, freed pages of data.mdb still hold what was replaced, so the
    file is rewritten with LMDB's compacting copy, but only by a process that has the
    environment to itself (the copy replaces data.mdb, which another process would keep
    writing through its old mapping); otherwise the next open alone does it.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar, cast

import lmdb

from sipmask.clock import Clock
from sipmask.config.schema import Config
from sipmask.errors import StoreError
from sipmask.observability.logging import get_logger
from sipmask.store import codec, crypto, reseal
from sipmask.store.base import Binding
from sipmask.store.rules import _ROUTE_SCAN, DATABASES, RuleStore, Txn

T = TypeVar("T")

log = get_logger("sipmask.store")

_decode = codec.decode_binding
MAX_DBS = 32            # the named databases in rules.py plus room for later modules
PROGRESS_EVERY_S = 2.0  # a progress line while a large store is sealed
_COMPACT_DIR = "compact.tmp"
_RETRIES = 8
DIR_MODE, FILE_MODE = 0o700, 0o600
_FILES = ("data.mdb", "lock.mdb")    # what LMDB keeps in an environment's directory


def _make_private(path: Path) -> None:
    """chmod the environment's directory and files to DIR_MODE / FILE_MODE. Only what the
    opening user owns: root running a CLI command must not take a service user's store,
    and another user's chmod would fail anyway. Other files in the directory are left."""
    me = os.geteuid()
    for item, mode in ((path, DIR_MODE), *((path / name, FILE_MODE) for name in _FILES)):
        try:
            found = item.stat()
        except FileNotFoundError:
            continue
        if found.st_uid == me and found.st_mode & 0o777 != mode:
            item.chmod(mode)


class _LmdbTxn:
    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database]) -> None:
        self.txn = txn
        self.dbs = dbs

    def get(self, db: str, key: bytes) -> bytes | None:
        return cast("bytes | None", self.txn.get(key, db=self.dbs[db]))

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.dbs[db])

    def delete(self, db: str, key: bytes) -> None:
        self.txn.delete(key, db=self.dbs[db])

    def insert(self, db: str, key: bytes, value: bytes) -> bool:
        return bool(self.txn.put(key, value, db=self.dbs[db], overwrite=False))

    def put_many(self, db: str, items: list[tuple[bytes, bytes]], overwrite: bool = True) -> int:
        # One cursor, one C loop. Keys past the database's last one (time-first binding
        # ids, audit and expiry keys) are appended: LMDB then fills each page before it
        # starts the next, where an insert splits a full page in two and leaves both half
        # empty (a bulk import wrote a third fewer pages, so its commits synced less).
        if not items:
            return 0
        cursor = self.txn.cursor(db=self.dbs[db])
        append = not cursor.last() or bytes(cursor.key()) < items[0][0]
        _, added = cursor.putmulti(items, overwrite=overwrite, append=append)
        if append and added != len(items):
            # MDB_APPEND skips a key that is not past the last: the items were not sorted.
            raise StoreError(f"put_many on {db}: {len(items) - added} key(s) out of order")
        return int(added)

    def scan(self, db: str, start: bytes = b"",
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        cursor = self.txn.cursor(db=self.dbs[db])
        if reverse:
            if cursor.last():
                yield from cast("Iterator[tuple[bytes, bytes]]", cursor.iterprev())
            return
        if cursor.set_range(start):
            yield from cast("Iterator[tuple[bytes, bytes]]", cursor.iternext())


def default_key_file(path: Path) -> Path:
    """The key file of a store opened without one named: beside it, `<store>.key` (the
    config names one: store.key_file)."""
    return path.with_name(path.name + ".key")


class LmdbStore(RuleStore):
    """BindingStore on LMDB. `env` and `db(name)` let later modules (CDRs, the event outbox)
    keep their records in the same environment and transactions.

    `key_file`: the store key (module docstring); default `default_key_file(path)`.
    `rekeying`: open a store whose rekey was left half done (`sipmask store rekey` only)."""

    def __init__(self, path: Path | str, clock: Clock | None = None, *,
                 map_size: int = 64 << 20, rng: random.Random | None = None,
                 key_file: Path | str | None = None, rekeying: bool = False) -> None:
        self.path = Path(path)
        self.key_file = Path(key_file) if key_file is not None else default_key_file(self.path)
        self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._map_size = map_size
        self._open_env()
        try:
            super().__init__(clock, rng, self._adopt_key(rekeying))
            self._seal_and_compact()
        except BaseException:
            self.env.close()    # a schema too new, a wrong key, a failing read: all of it goes
            raise

    def _open_env(self) -> None:
        try:
            _make_private(self.path)     # before LMDB creates files in a directory others read
            self.env = lmdb.open(str(self.path), map_size=self._map_size, max_dbs=MAX_DBS,
                                 max_readers=512, subdir=True, sync=True, metasync=True,
                                 readahead=False, mode=FILE_MODE)
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from None
        try:
            _make_private(self.path)     # files an older sipmask made 0644
            self._dbs = {name: self.env.open_db(name.encode()) for name in DATABASES}
            self._route_db = self._dbs["route"]
        except OSError as exc:
            self.env.close()
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from None

    def db(self, name: str) -> lmdb._Database:
        """A named database of this environment (cdrs, outbox, or a new one)."""
        if name not in self._dbs:
            self._dbs[name] = self.env.open_db(name.encode())
        return self._dbs[name]

    def _adopt_key(self, rekeying: bool) -> crypto.Keyring:
        """The store's Keyring, after checking the schema and that the key file is the one
        the store is sealed with. A new or schema 1 store takes the key file (made when
        missing) and is marked for sealing, in one transaction."""
        meta = self._read(lambda txn: {name: txn.get("meta", name) for name in (
            b"schema_version", reseal.META_KEY_ID, reseal.META_GENERATION,
            reseal.META_REKEY)})
        schema = int(meta[b"schema_version"] or 0)
        if schema > codec.SCHEMA_VERSION:
            raise StoreError(f"the store at {self.path} has schema {schema}; this sipmask "
                             f"reads up to {codec.SCHEMA_VERSION}")
        sealed_with = meta[reseal.META_KEY_ID]
        if sealed_with is None:
            master = crypto.create_key_file(self.key_file) if not self.key_file.exists() \
                else crypto.read_key_file(self.key_file)
        else:
            try:
                master = crypto.read_key_file(self.key_file)
            except crypto.KeyFileError as exc:
                raise crypto.KeyFileError(f"{exc}; the store at {self.path} is sealed with "
                                          f"key {sealed_with.decode()}: restore that key "
                                          "file") from None
        generation = int(meta[reseal.META_GENERATION] or 1)
        keys = crypto.Keyring(master, generation)
        if sealed_with is None:
            def adopt(txn: Txn) -> None:
                if txn.get("meta", reseal.META_KEY_ID) is not None:
                    return     # another process adopted a key first: checked below
                txn.put("meta", b"schema_version", str(codec.SCHEMA_VERSION).encode())
                txn.put("meta", reseal.META_KEY_ID, keys.fingerprint.encode())
                txn.put("meta", reseal.META_GENERATION, str(generation).encode())
                if schema:     # records from before sealing: seal them (below)
                    txn.put("meta", reseal.META_SEALING, b"1")
            self._write(adopt)
            meta = self._read(lambda txn: {name: value for name in (
                reseal.META_KEY_ID, reseal.META_REKEY)
                if (value := txn.get("meta", name)) is not None})
        reseal.check_key({k: v for k, v in meta.items() if v is not None}, keys,
                         self.key_file, rekeying=rekeying)
        return keys

    def _seal_and_compact(self) -> None:
        if self._read(lambda txn: txn.get("meta", reseal.META_SEALING)) is not None:
            self._seal_plaintext()
        if self._read(lambda txn: txn.get("meta", reseal.META_COMPACT)) is not None:
            self.compact()

    def _seal_plaintext(self) -> None:
        with self.env.begin() as txn:
            total = sum(int(txn.stat(self.db(name))["entries"])
                        for name in ("bindings", "route", "audit", *reseal.JSON_DATABASES))
        log.info("store.sealing", path=str(self.path), records=total,
                 hint="real numbers stored in clear by an older sipmask are being sealed")
        started = last = time.monotonic()
        done: dict[str, int] = {}

        def progress(db: str, seen: int) -> None:
            nonlocal last
            done[db] = seen
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY_S:
                last = now
                log.info("store.sealing", path=str(self.path), database=db,
                         records_done=sum(done.values()), records=total)
        changed = reseal.seal_plaintext(self, self.keys, progress)
        log.info("store.sealed", path=str(self.path), records=changed,
                 seconds=round(time.monotonic() - started, 3))

    def compact(self) -> bool:
        """Rewrite data.mdb with only its live pages (LMDB's compacting copy), so pages
        freed by sealing or a rekey, which still hold what they replaced, leave the file.
        Only when no other process has the environment open: every opener holds a shared
        lock on lock.mdb's first byte (LMDB's mdb_env_excl_lock), so an exclusive lock on
        it, taken with this process's environment closed, proves we are alone, and makes a
        process that opens meanwhile wait. Returns whether it compacted; when not, meta
        `compact` stays and the next open tries again."""
        self.env.close()
        try:
            done = self._compact_alone()
        finally:
            self._open_env()
        if done:
            self._write(lambda txn: txn.delete("meta", reseal.META_COMPACT))
            log.info("store.compacted", path=str(self.path), bytes=self.disk_bytes())
        else:
            log.warning("store.compact_deferred", path=str(self.path),
                        hint="another process has the store open; its file may still hold "
                             "replaced records until sipmask opens it alone")
        return done

    def _compact_alone(self) -> bool:
        fd = os.open(self.path / "lock.mdb", os.O_RDWR)
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
            except OSError:
                return False
            scratch = self.path / _COMPACT_DIR
            shutil.rmtree(scratch, ignore_errors=True)     # a copy a crash left behind
            scratch.mkdir(mode=DIR_MODE)
            try:
                # lock=False: LMDB leaves lock.mdb (and our lock on it) alone.
                env = lmdb.open(str(self.path), max_dbs=MAX_DBS, lock=False, readonly=True,
                                subdir=True)
                try:
                    env.copy(str(scratch), compact=True)
                finally:
                    env.close()
                copy = scratch / "data.mdb"
                copy.chmod(FILE_MODE)
                with open(copy, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(copy, self.path / "data.mdb")   # atomic: old or new, never half
                dir_fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            return True
        finally:
            os.close(fd)          # releases the lock (this process has no env open here)

    def _adopt_size(self) -> None:
        self.env.set_mapsize(0)   # 0: take the size another process grew the map to

    def _read(self, fn: Callable[[Txn], T]) -> T:
        for _ in range(_RETRIES):
            try:
                with self.env.begin() as txn:
                    return fn(_LmdbTxn(txn, self._dbs))
            except lmdb.MapResizedError:
                self._adopt_size()
        raise StoreError("the store kept resizing under this read")

    def _write(self, fn: Callable[[Txn], T]) -> T:
        for _ in range(_RETRIES):
            try:
                with self.env.begin(write=True) as txn:
                    return fn(_LmdbTxn(txn, self._dbs))
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                self._adopt_size()
        raise StoreError("the store map could not grow enough for this write")

    def route(self, x: str, caller: str, now: float) -> Binding | None:
        # The call path: one read transaction (a fresh snapshot, so CLI/API writes count at
        # once; py-lmdb renews a spare reader rather than opening one), one get, and the
        # value is the binding itself. The transaction is aborted when its last reference
        # goes, at return: no `with` block, which costs as much as the get. The database
        # is passed by position: py-lmdb parses keyword arguments slowly (0.1-0.2 µs here).
        # The key is X and the caller's keyed hash (codec.route_key, written out here), the
        # record's numbers are opened with one AES-GCM call (codec.decode_binding).
        keys = self.keys
        try:
            txn = self.env.begin(self._route_db)
        except lmdb.MapResizedError:
            self._adopt_size()
            txn = self.env.begin(self._route_db)
        prefix = x.encode()
        raw = txn.get(prefix + keys.index(x, caller))
        if raw is not None:
            b = _decode(raw, keys)
            expires = b.expires_at
            if expires is None or now < expires:
                return b
        cursor = txn.cursor()
        if not cursor.set_range(prefix):
            return None
        for i, (key, value) in enumerate(cursor.iternext()):
            if i >= _ROUTE_SCAN or not key.startswith(prefix):
                break
            b = _decode(value, keys)
            if b.live(now):
                return b
        return None

    def disk_bytes(self) -> int:
        """Bytes the environment's pages use (not the sparse map size)."""
        info, stat = self.env.info(), self.env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    def close(self) -> None:
        self.env.close()


def open_store(config: Config, clock: Clock | None = None) -> LmdbStore:
    """Open the configured store and seed the config's tenants and pools into it. Removed
    bindings stay in its history for cdr.retention_days (0: for ever)."""
    store = LmdbStore(config.store.path, clock, map_size=config.store.map_size_mb << 20,
                      key_file=config.store.key_file)
    days = config.cdr.retention_days
    store.history_keep_s = days * 86400.0 if days else None
    try:
        store.sync_tenants(config.tenants)
    except BaseException:
        store.close()
        raise
    return store
