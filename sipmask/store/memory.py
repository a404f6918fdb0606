"""An in-memory store for unit tests of other modules: the same rules as LMDB (rules.py)
over sorted dicts. A write that raises is undone, as an aborted LMDB transaction would be.
Its records are sealed like LMDB's, with a key made for the process (RuleStore's default),
so the same rules and the same bytes are tested."""

from __future__ import annotations

import bisect
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from sipmask.clock import Clock
from sipmask.config.schema import TenantConfig
from sipmask.store import codec
from sipmask.store.crypto import Keyring
from sipmask.store.rules import KeyExists, RuleStore, Txn

T = TypeVar("T")


class _Table:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.keys: list[bytes] = []     # sorted, for scans (LMDB iterates keys in order)


class _MemoryTxn:
    def __init__(self, tables: dict[str, _Table], write: bool) -> None:
        self.tables = tables
        self.write = write
        self.undo: list[tuple[str, bytes, bytes | None]] = []

    def get(self, db: str, key: bytes) -> bytes | None:
        return self.tables[db].data.get(key)

    def get_many(self, db: str, keys: list[bytes]) -> dict[bytes, bytes]:
        data = self.tables[db].data
        return {key: data[key] for key in keys if key in data}

    def put(self, db: str, key: bytes, value: bytes) -> None:
        assert self.write, "put in a read transaction"
        t = self.tables[db]
        prev = t.data.get(key)
        self.undo.append((db, key, prev))
        if prev is None:
            bisect.insort(t.keys, key)
        t.data[key] = value

    def insert(self, db: str, key: bytes, value: bytes) -> bool:
        if key in self.tables[db].data:
            return False
        self.put(db, key, value)
        return True

    def get_later(self, db: str, key: bytes) -> Callable[[], bytes | None]:
        value = self.get(db, key)
        return lambda: value

    def put_many(self, db: str, items: list[tuple[bytes, bytes]]) -> int:
        data = self.tables[db].data
        added = sum(1 for key, _ in items if key not in data)
        for key, value in items:
            self.put(db, key, value)
        return added

    def insert_rows(self, db: str, items: list[tuple[bytes, bytes]]) -> None:
        there = sum(1 for key, _ in items if key in self.tables[db].data)
        if there:
            raise KeyExists(f"{there} key(s) already in {db}")
        for key, value in items:
            self.put(db, key, value)

    def put_rows(self, db: str, items: list[tuple[bytes, bytes]]) -> None:
        self.put_many(db, items)

    def delete(self, db: str, key: bytes) -> None:
        assert self.write, "delete in a read transaction"
        t = self.tables[db]
        prev = t.data.pop(key, None)
        if prev is not None:
            self.undo.append((db, key, prev))
            del t.keys[bisect.bisect_left(t.keys, key)]

    def delete_many(self, db: str, keys: list[bytes]) -> None:
        for key in keys:
            self.delete(db, key)

    def scan(self, db: str, start: bytes = b"",
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        # Re-seek after every step so the caller may write between steps, as with a cursor.
        t = self.tables[db]
        if reverse:
            i = len(t.keys) - 1
            while 0 <= i < len(t.keys):
                key = t.keys[i]
                yield key, t.data[key]
                i = bisect.bisect_left(t.keys, key) - 1
            return
        i = bisect.bisect_left(t.keys, start)
        while i < len(t.keys):
            key = t.keys[i]
            yield key, t.data[key]
            i = bisect.bisect_right(t.keys, key)

    def rollback(self) -> None:
        for db, key, prev in reversed(self.undo):
            t = self.tables[db]
            if prev is None:
                t.data.pop(key, None)
                del t.keys[bisect.bisect_left(t.keys, key)]
            else:
                if key not in t.data:
                    bisect.insort(t.keys, key)
                t.data[key] = prev


class MemoryStore(RuleStore):
    """BindingStore in a dict. Not shared between processes; tests only. It fetches ahead
    as PostgreSQL does (RuleStore.reads_ahead), so the store suite runs that path even
    where no PostgreSQL server is installed."""

    reads_ahead = True

    def __init__(self, clock: Clock | None = None,
                 tenants: Mapping[str, TenantConfig] | None = None,
                 rng: random.Random | None = None, keys: Keyring | None = None) -> None:
        super().__init__(clock, rng, keys)
        # Any name works, as LmdbStore.db(name) opens any named database.
        self._tables: dict[str, _Table] = defaultdict(_Table)
        self._tables["meta"].data[b"schema_version"] = str(codec.SCHEMA_VERSION).encode()
        self._tables["meta"].keys.append(b"schema_version")
        if tenants:
            self.sync_tenants(tenants)

    def _read(self, fn: Callable[[Txn], T]) -> T:
        return fn(_MemoryTxn(self._tables, write=False))

    def _write(self, fn: Callable[[Txn], T]) -> T:
        txn = _MemoryTxn(self._tables, write=True)
        try:
            return fn(txn)
        except BaseException:
            txn.rollback()
            raise
