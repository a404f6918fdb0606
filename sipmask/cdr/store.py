"""CDRs in the store's LMDB environment: written with sync on commit, read by time.

Keys are the invite time in microseconds (big-endian, so keys sort by time) followed by the
call id, so `since` is one cursor seek. The write happens in the call path before the call's
last response leaves (CONTRACT), so an acknowledged call always has its record.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Protocol

from sipmask.cdr.record import Cdr
from sipmask.store.lmdb import LmdbStore
from sipmask.store.rules import Txn

DB = "cdrs"


class CdrSink(Protocol):
    def write(self, cdr: Cdr) -> None: ...


def _key(cdr: Cdr) -> bytes:
    return struct.pack(">Q", max(0, int(cdr.invite_at * 1_000_000))) + cdr.call_id.encode()


def _since_key(since: float | None) -> bytes:
    return b"" if since is None else struct.pack(">Q", max(0, int(since * 1_000_000)))


class CdrLog:
    """CDRs kept in the bindings store's environment (one fsync per record)."""

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        store.db(DB)

    def write(self, cdr: Cdr) -> None:
        self.store.write(lambda txn: txn.put(DB, _key(cdr), cdr.encode()))

    def list(self, since: float | None = None, tenant: str | None = None,
             limit: int | None = None) -> list[Cdr]:
        def run(txn: Txn) -> list[Cdr]:
            out: list[Cdr] = []
            for _key, value in txn.scan(DB, _since_key(since)):
                cdr = Cdr.decode(value)
                if tenant is not None and cdr.tenant != tenant:
                    continue
                out.append(cdr)
                if limit is not None and len(out) >= limit:
                    break
            return out
        return self.store.read(run)

    def count(self) -> int:
        with self.store.env.begin() as txn:
            return int(txn.stat(self.store.db(DB))["entries"])


class MemoryCdrLog:
    """For unit tests of the engine: the same interface, in a list."""

    def __init__(self) -> None:
        self.records: list[Cdr] = []

    def write(self, cdr: Cdr) -> None:
        self.records.append(cdr)

    def __iter__(self) -> Iterator[Cdr]:
        return iter(self.records)
