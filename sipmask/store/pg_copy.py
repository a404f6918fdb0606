"""`sipmask store copy --to DSN`: an LMDB store's records into an empty PostgreSQL database.

The copy is of records, not of meaning: every named database of the LMDB environment goes
key for key, value for value into its table (store/pg_schema.py), so bindings, pools,
audit, CDRs, the call journal and undelivered events arrive exactly as they were, encrypted
values and keyed-hash keys included (the same `store.key_file` reads them after). The
target must hold no records yet; the outbox's sequence is moved past the copied events.
Stop `sipmask serve` on the LMDB store first: writes after the copy began are not carried.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from sipmask.errors import StoreError
from sipmask.store.lmdb import LmdbStore
from sipmask.store.pg_schema import SCHEMA, TABLES
from sipmask.store.postgres import PostgresStore
from sipmask.store.rules import Txn

BATCH = 5000            # records per PostgreSQL transaction
Progress = Callable[[str, int, int], None]     # (table, records done, records in all)


def lmdb_counts(source: LmdbStore) -> dict[str, int]:
    """Records per named database (LMDB's entry counts: no scan)."""
    dbs = {name: source.db(name) for name in TABLES}   # opened outside the read transaction
    with source.env.begin() as txn:
        return {name: int(txn.stat(db)["entries"]) for name, db in dbs.items()}


def copy_store(source: LmdbStore, target: PostgresStore,
               progress: Progress | None = None) -> dict[str, int]:
    """Copy every named database; returns records copied per table. StoreError when the
    target already holds records (all but the schema version in `meta`)."""
    if any(target.count(name) for name in TABLES if name != "meta"):
        raise StoreError("the target database already holds sipmask records: copy into "
                         "an empty one")
    counts = lmdb_counts(source)
    total = sum(counts.values())
    done = 0
    copied: dict[str, int] = {}
    for name in TABLES:
        copied[name] = 0
        batch: list[tuple[bytes, bytes]] = []

        def flush(rows: list[tuple[bytes, bytes]]) -> None:
            def run(txn: Txn) -> int:
                return txn.put_many(name, rows)   # noqa: B023 - called before the loop moves on
            target.write(run)

        db = source.db(name)
        with source.env.begin() as txn:
            for key, value in txn.cursor(db=db):
                batch.append((bytes(key), bytes(value)))
                if len(batch) >= BATCH:
                    flush(batch)
                    copied[name] += len(batch)
                    done += len(batch)
                    batch = []
                    if progress is not None:
                        progress(name, done, total)
        if batch:
            flush(batch)
            copied[name] += len(batch)
            done += len(batch)
        if progress is not None:
            progress(name, done, total)
    _advance_outbox_sequence(source, target)
    return copied


def _advance_outbox_sequence(source: LmdbStore, target: PostgresStore) -> None:
    """New events must sort after the copied ones: the sequence starts past LMDB's."""
    db = source.db("outbox_state")
    with source.env.begin() as txn:
        raw = txn.get(b"seq", db=db)
    last = struct.unpack(">Q", raw)[0] if raw else 0
    if last:
        target.run_sql(lambda cur: cur.execute(
            f"SELECT setval('{SCHEMA}.outbox_seq', %s)", (last,)))
