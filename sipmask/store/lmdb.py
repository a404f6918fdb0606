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
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

import lmdb

from sipmask.clock import Clock
from sipmask.config.schema import Config
from sipmask.errors import StoreError
from sipmask.store import codec
from sipmask.store.base import Binding
from sipmask.store.rules import _ROUTE_SCAN, DATABASES, RuleStore, Txn

if TYPE_CHECKING:
    from sipmask.store.postgres import PostgresStore

T = TypeVar("T")

_decode = codec.decode_binding
MAX_DBS = 16            # the named databases in rules.py plus room for later modules
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


class LmdbStore(RuleStore):
    """BindingStore on LMDB. `env` and `db(name)` let later modules (CDRs, the event outbox)
    keep their records in the same environment and transactions."""

    def __init__(self, path: Path | str, clock: Clock | None = None, *,
                 map_size: int = 64 << 20, rng: random.Random | None = None) -> None:
        super().__init__(clock, rng)
        self.path = Path(path)
        self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        try:
            _make_private(self.path)     # before LMDB creates files in a directory others read
            self.env = lmdb.open(str(self.path), map_size=map_size, max_dbs=MAX_DBS,
                                 max_readers=512, subdir=True, sync=True, metasync=True,
                                 readahead=False, mode=FILE_MODE)
        except (lmdb.Error, OSError) as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from None
        try:
            _make_private(self.path)     # files an older sipmask made 0644
            self._dbs = {name: self.env.open_db(name.encode()) for name in DATABASES}
            self._route_db = self._dbs["route"]
            self._check_schema()
        except OSError as exc:
            self.env.close()
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from None
        except BaseException:
            self.env.close()    # a schema too new, a failing read: the environment goes too
            raise

    def db(self, name: str) -> lmdb._Database:
        """A named database of this environment (cdrs, outbox, or a new one)."""
        if name not in self._dbs:
            self._dbs[name] = self.env.open_db(name.encode())
        return self._dbs[name]

    def _check_schema(self) -> None:
        def run(txn: Txn) -> int:
            raw = txn.get("meta", b"schema_version")
            if raw is None:
                txn.put("meta", b"schema_version", str(codec.SCHEMA_VERSION).encode())
                return codec.SCHEMA_VERSION
            return int(raw)
        if self._read(lambda txn: txn.get("meta", b"schema_version")) is None:
            version = self._write(run)
        else:
            version = self._read(run)
        if version > codec.SCHEMA_VERSION:
            raise StoreError(f"the store at {self.path} has schema {version}; this sipmask "
                             f"reads up to {codec.SCHEMA_VERSION}")

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
        try:
            txn = self.env.begin(self._route_db)
        except lmdb.MapResizedError:
            self._adopt_size()
            txn = self.env.begin(self._route_db)
        raw = txn.get((x + caller).encode())
        if raw is not None:
            b = _decode(raw)
            expires = b.expires_at
            if expires is None or now < expires:
                return b
        prefix = x.encode()
        cursor = txn.cursor()
        if not cursor.set_range(prefix):
            return None
        for i, (key, value) in enumerate(cursor.iternext()):
            if i >= _ROUTE_SCAN or not key.startswith(prefix):
                break
            b = _decode(value)
            if b.live(now):
                return b
        return None

    def disk_bytes(self) -> int:
        """Bytes the environment's pages use (not the sparse map size)."""
        info, stat = self.env.info(), self.env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    def close(self) -> None:
        self.env.close()


if TYPE_CHECKING:
    # What open_store gives: the backend `store.backend` names.
    AnyStore = LmdbStore | PostgresStore


def open_store(config: Config, clock: Clock | None = None) -> AnyStore:
    """Open the store `store.backend` names and seed the config's tenants and pools into
    it. PostgreSQL: the schema is migrated first, under an advisory lock (so every command
    and every `serve` start brings it up to date; nodes starting together do not race)."""
    store: AnyStore
    if config.store.backend == "postgres":
        # Imported here: psycopg costs 0.1 s to import, and LMDB users never need it.
        from sipmask.store.postgres import PostgresStore
        assert config.store.dsn is not None     # the loader refuses postgres without one
        store = PostgresStore(config.store.dsn, clock, pool_size=config.store.pool_size,
                              call_workers=config.store.lookup_threads,
                              call_queue=config.store.lookup_queue)
    else:
        store = LmdbStore(config.store.path, clock, map_size=config.store.map_size_mb << 20)
    try:
        store.sync_tenants(config.tenants)
    except BaseException:
        store.close()
        raise
    return store
