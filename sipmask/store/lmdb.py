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
  - a new store takes the key file, which is made (32 random bytes, 0600) when missing;
  - a store written before sealing (schema 1) is copied, record by record, sealed
    (store/reseal.py), into a new environment that then replaces data.mdb: the new file
    never held the plaintext, where sealing in place would leave it in freed pages, in the
    unused middle of live pages and in branch keys of the old route index. Progress goes
    to the log. A crash before the new file is in place leaves the old store as it was
    and a scratch directory the next start removes before it copies again;
  - a sealed store needs the key it was sealed with: a missing key file or another key is
    refused with a message naming store.key_file (no key is made then).
The copy replaces data.mdb, which another process with the store open would keep using
through its old mapping, so it runs only while this process has the store to itself
(`_lock_alone`); `rekey` (`sipmask store rekey`) copies the same way into the new key.
"""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import lmdb

from sipmask.clock import Clock
from sipmask.config.schema import Config, StoreConfig
from sipmask.errors import StoreError
from sipmask.observability.logging import get_logger
from sipmask.store import codec, crypto, reseal
from sipmask.store.base import Binding
from sipmask.store.rules import _ROUTE_SCAN, DATABASES, KeyExists, RuleStore, Txn

if TYPE_CHECKING:
    from sipmask.store.postgres import PostgresStore

T = TypeVar("T")

log = get_logger("sipmask.store")

_decode = codec.decode_binding
MAX_DBS = 32            # the named databases in rules.py plus room for later modules
PROGRESS_EVERY_S = 2.0  # a progress line while a store is copied (sealed or rekeyed)
ALONE_WAIT_S = 10.0     # how long a copy waits for other processes to close the store
_SCRATCH = "copy.tmp"   # the new environment, inside the store's private directory
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

    def get_later(self, db: str, key: bytes) -> Callable[[], bytes | None]:
        value = self.get(db, key)      # a memory read: nothing to gain by waiting
        return lambda: value

    def get_many(self, db: str, keys: list[bytes]) -> dict[bytes, bytes]:
        # A read here is a memory lookup, not a round trip: one get per key.
        get, handle = self.txn.get, self.dbs[db]
        found = {}
        for key in keys:
            value = get(key, db=handle)
            if value is not None:
                found[key] = cast("bytes", value)
        return found

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self.txn.put(key, value, db=self.dbs[db])

    def delete(self, db: str, key: bytes) -> None:
        self.txn.delete(key, db=self.dbs[db])

    def delete_many(self, db: str, keys: list[bytes]) -> None:
        delete, handle = self.txn.delete, self.dbs[db]
        for key in keys:
            delete(key, db=handle)

    def insert(self, db: str, key: bytes, value: bytes) -> bool:
        return bool(self.txn.put(key, value, db=self.dbs[db], overwrite=False))

    def put_many(self, db: str, items: list[tuple[bytes, bytes]]) -> int:
        # putmulti counts a key it overwrote as added: the new ones are counted first.
        get, handle = self.txn.get, self.dbs[db]
        new = sum(1 for key, _ in items if get(key, db=handle) is None)
        self._putmulti(db, items, overwrite=True)
        return new

    def put_rows(self, db: str, items: list[tuple[bytes, bytes]]) -> None:
        self._putmulti(db, items, overwrite=True)

    def insert_rows(self, db: str, items: list[tuple[bytes, bytes]]) -> None:
        added = self._putmulti(db, items, overwrite=False)
        if added != len(items):     # the write transaction is aborted by the raise
            raise KeyExists(f"{len(items) - added} key(s) already in {db}")

    def _putmulti(self, db: str, items: list[tuple[bytes, bytes]], overwrite: bool) -> int:
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


def default_key_file() -> Path:
    """The key file of a store opened without one named: store.key_file's default
    (var/sipmask.key, against the working directory), so a script that opens the store
    the server uses, from where the server runs, needs no more than its path."""
    return StoreConfig().key_file


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LmdbStore(RuleStore):
    """BindingStore on LMDB. `env` and `db(name)` let later modules (CDRs, the event outbox)
    keep their records in the same environment and transactions.

    `key_file`: the store key (module docstring); default `default_key_file()`."""

    def __init__(self, path: Path | str, clock: Clock | None = None, *,
                 map_size: int = 64 << 20, rng: random.Random | None = None,
                 key_file: Path | str | None = None) -> None:
        self.path = Path(path)
        self.key_file = Path(key_file) if key_file is not None else default_key_file()
        self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._map_size = map_size
        self._lock_fd: int | None = None      # held after a copy replaced data.mdb (_copy)
        self._open_env()
        try:
            super().__init__(clock, rng, self._adopt_key())
        except BaseException:
            self.close()        # a schema too new, a wrong key, a failing read: all of it goes
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

    def _meta(self) -> dict[bytes, bytes | None]:
        return self._read(lambda txn: {name: txn.get("meta", name) for name in (
            b"schema_version", reseal.META_KEY_ID, reseal.META_GENERATION)})

    def _adopt_key(self) -> crypto.Keyring:
        """The store's Keyring, after checking the schema and that the key file is the one
        the store is sealed with; a schema 1 store is sealed first (module docstring)."""
        meta = self._meta()
        schema = int(meta[b"schema_version"] or 0)
        if schema > codec.SCHEMA_VERSION:
            raise StoreError(f"the store at {self.path} has schema {schema}; this sipmask "
                             f"reads up to {codec.SCHEMA_VERSION}")
        sealed_with = meta[reseal.META_KEY_ID]
        if sealed_with is None:
            master = (crypto.read_key_file(self.key_file) if self.key_file.exists()
                      else crypto.create_key_file(self.key_file))
        else:
            if not self.key_file.exists():   # a new key could never open this store
                raise crypto.KeyFileError(f"store.key_file: {self.key_file} does not exist; "
                                          f"the store at {self.path} is sealed with key "
                                          f"{sealed_with.decode()}: restore that key file")
            master = crypto.read_key_file(self.key_file)
        keys = crypto.Keyring(master, int(meta[reseal.META_GENERATION] or 1))
        if sealed_with is None and schema == 0:
            def adopt(txn: Txn) -> bytes | None:
                known = txn.get("meta", reseal.META_KEY_ID)
                if known is None:      # else another process made the store first
                    txn.put("meta", b"schema_version", str(codec.SCHEMA_VERSION).encode())
                    for name, value in reseal.key_meta(keys).items():
                        txn.put("meta", name, value)
                return known
            sealed_with = self._write(adopt)
        elif sealed_with is None:
            self._copy(lambda db, key, raw: reseal.seal_rows(db, key, raw, keys), keys,
                       "sealing", None)
            sealed_with = self._meta()[reseal.META_KEY_ID]   # ours, or another process's
        reseal.check_key({reseal.META_KEY_ID: sealed_with}, keys, self.key_file)
        return keys

    def rekey(self, new_master: bytes) -> crypto.Keyring:
        """Copy the store into one sealed with the key `new_master` (module docstring);
        returns the new Keyring, now this store's. StoreError when another process has
        the store open."""
        old = self.keys
        new = crypto.Keyring(new_master, old.generation % 255 + 1)
        if new.fingerprint == old.fingerprint:
            raise StoreError(f"the new key is the store's own key ({old.fingerprint})")
        if not self._copy(lambda db, key, raw: reseal.rekey_rows(db, key, raw, old, new), new,
                          "rekey", old.fingerprint.encode()):
            raise StoreError("another process rekeyed the store meanwhile")
        self.keys = new
        return new

    # -- copying the store into a new file ---------------------------------------------------
    def _copy(self, convert: Callable[[str, bytes, bytes], list[reseal.Row]],
              keys: crypto.Keyring, what: str, expect: bytes | None) -> bool:
        """Every record through `convert` into a new environment sealed with `keys`, which
        then replaces data.mdb, with this process alone on the store (module docstring).
        `expect`: the key id the store's meta has before the copy (None: not sealed); when
        it has changed, another process did the copy first, and this one does nothing
        (returns False)."""
        self._release_lock()
        self.env.close()
        try:
            fd = self._lock_alone(what, expect)
        except BaseException:
            self._open_env()
            raise
        if fd is None:
            self._open_env()
            return False
        replaced = False
        try:
            scratch = self.path / _SCRATCH
            shutil.rmtree(scratch, ignore_errors=True)     # a copy a crash left behind
            scratch.mkdir(mode=DIR_MODE)
            try:
                if self._copy_into(scratch, convert, keys, what, expect):
                    new = scratch / "data.mdb"
                    new.chmod(FILE_MODE)
                    os.replace(new, self.path / "data.mdb")  # atomic: old or new, never half
                    _fsync_dir(self.path)
                    replaced = True
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        finally:
            if not replaced:
                os.close(fd)     # releases the lock: this process has no environment open
                self._open_env()
        # lock.mdb's reader table still describes the old file (its last transaction id
        # picks which meta page readers trust). LMDB rebuilds the table only in the first
        # process to open the environment; this process holds the exclusive lock, so its
        # open is that first one, and LMDB shares the lock only once the table describes
        # the new file. `fd` stays open until close(): closing any descriptor of lock.mdb
        # drops every lock this process holds on it (POSIX), the environment's included.
        self._lock_fd = fd
        try:
            self._open_env()
        except BaseException:
            self._release_lock()
            raise
        return True

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock_alone(self, what: str, expect: bytes | None) -> int | None:
        """An exclusive lock on lock.mdb's first byte, held while the store is replaced.
        Every process with the environment open holds a shared lock there (LMDB's
        mdb_env_excl_lock), so getting it proves this one is alone, and a process that
        opens the store meanwhile waits for it. This process's environment is closed.
        None when, while waiting, another process did the copy (the key id moved on)."""
        fd = os.open(self.path / "lock.mdb", os.O_RDWR | os.O_CREAT, FILE_MODE)
        deadline = time.monotonic() + ALONE_WAIT_S
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
                return fd
            except OSError:
                if self._key_id(lock=True) != expect:
                    os.close(fd)
                    return None
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreError(
                        f"the store at {self.path} needs {what} and another process has it "
                        f"open: stop every sipmask process that uses it (sipmask serve, "
                        f"admin commands) and start again") from None
                time.sleep(0.1)

    def _key_id(self, lock: bool) -> bytes | None:
        """The meta's key id, read with a short-lived read-only environment (this store's
        own is closed while it waits to be alone). `lock=False` only while this process
        holds the exclusive lock, so nobody writes."""
        env = lmdb.open(str(self.path), max_dbs=MAX_DBS, readonly=True, lock=lock,
                        subdir=True)
        try:
            with env.begin() as txn:
                meta = env.open_db(b"meta", txn=txn, create=False)
                found = txn.get(reseal.META_KEY_ID, db=meta)
                return None if found is None else bytes(found)
        finally:
            env.close()

    def _copy_into(self, scratch: Path, convert: Callable[[str, bytes, bytes], list[reseal.Row]],
                   keys: crypto.Keyring, what: str, expect: bytes | None) -> bool:
        # lock=False: neither environment touches a lock file (ours is held, the scratch
        # one is private); the new one syncs once, at the end, before it replaces the old.
        if self._key_id(lock=False) != expect:
            return False        # another process copied it between our look and our lock
        src = lmdb.open(str(self.path), max_dbs=MAX_DBS, lock=False, readonly=True,
                        subdir=True, readahead=False)
        try:
            dst = lmdb.open(str(scratch), map_size=max(self._map_size,
                                                       src.info()["map_size"]),
                            max_dbs=MAX_DBS, lock=False, subdir=True, sync=False,
                            mode=FILE_MODE)
            try:
                self._copy_records(src, dst, convert, keys, what)
                dst.sync(True)
            finally:
                dst.close()
        finally:
            src.close()
        return True

    def _copy_records(self, src: lmdb.Environment, dst: lmdb.Environment,
                      convert: Callable[[str, bytes, bytes], list[reseal.Row]],
                      keys: crypto.Keyring, what: str) -> None:
        dbs: dict[str, lmdb._Database] = {}

        def target(name: str) -> lmdb._Database:
            if name not in dbs:
                dbs[name] = dst.open_db(name.encode())
            return dbs[name]

        def write(rows: list[reseal.Row]) -> None:
            for name in {name for name, _, _ in rows}:
                target(name)           # opened outside the write transaction (LMDB's rule)
            for _ in range(_RETRIES):
                try:
                    with dst.begin(write=True) as txn:
                        for name, key, value in rows:
                            txn.put(key, value, db=dbs[name])
                    return
                except lmdb.MapFullError:
                    dst.set_mapsize(dst.info()["map_size"] * 2)
            raise StoreError("the store map could not grow enough for this copy")

        with src.begin() as txn:
            names = [bytes(k).decode() for k, _ in txn.cursor()]
            total = sum(int(txn.stat(src.open_db(n.encode(), txn=txn, create=False))["entries"])
                        for n in names)
            log.info(f"store.{what}", path=str(self.path), records=total)
            started = last = time.monotonic()
            done = 0
            for name in names:
                if name == "meta":
                    continue
                source = src.open_db(name.encode(), txn=txn, create=False)
                rows: list[reseal.Row] = []
                count = 0
                for key, value in txn.cursor(db=source):
                    rows.extend(convert(name, bytes(key), bytes(value)))
                    count += 1
                    if count >= reseal.BATCH:
                        write(rows)
                        done, rows, count = done + count, [], 0
                        if time.monotonic() - last >= PROGRESS_EVERY_S:
                            last = time.monotonic()
                            log.info(f"store.{what}", path=str(self.path), database=name,
                                     records_done=done, records=total)
                write(rows)
                done += count
            meta = src.open_db(b"meta", txn=txn, create=False)
            kept = {bytes(k): bytes(v) for k, v in txn.cursor(db=meta)}
        kept[b"schema_version"] = str(codec.SCHEMA_VERSION).encode()
        kept.update(reseal.key_meta(keys))
        write([("meta", k, v) for k, v in sorted(kept.items())])
        log.info(f"store.{what}_done", path=str(self.path), records=done,
                 seconds=round(time.monotonic() - started, 3))

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

    def route(self, x: str, caller: str, now: float, ext: str | None = None) -> Binding | None:
        if ext is not None:    # AXE with an extension: RuleStore's one get by X + E
            return super().route(x, caller, now, ext)
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
        self._release_lock()       # after the environment: see _copy


if TYPE_CHECKING:
    # What open_store gives: the backend `store.backend` names.
    AnyStore = LmdbStore | PostgresStore


def open_store(config: Config, clock: Clock | None = None) -> AnyStore:
    """Open the store `store.backend` names and seed the config's tenants and pools into
    it. PostgreSQL: the schema is migrated first, under an advisory lock (so every command
    and every `serve` start brings it up to date; nodes starting together do not race).
    Removed bindings stay in its history for cdr.retention_days (0: for ever)."""
    store: AnyStore
    if config.store.backend == "postgres":
        # Imported here: psycopg costs 0.1 s to import, and LMDB users never need it.
        from sipmask.store.postgres import PostgresStore
        assert config.store.dsn is not None     # the loader refuses postgres without one
        store = PostgresStore(config.store.dsn, clock, pool_size=config.store.pool_size,
                              call_workers=config.store.lookup_threads,
                              call_queue=config.store.lookup_queue,
                              key_file=config.store.key_file)
    else:
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
