"""The PostgreSQL schema: one table per named database of store/rules.py, and its migrations.

rules.py speaks key-value over named databases (byte keys in order, byte values). The
faithful mapping is one table per name, `k bytea` (the key, in its byte order) and `v bytea`
(the value as codec.py encoded it), plus, where a table must be spread or split, a column
derived from the key that keeps the key order:

    kind    tables                         columns                          why
    plain   meta bindings expiry pools     k PK, v                          as in LMDB
            tenants audit calls_up
            outbox_state history_end
    by_x    route xuse history             x = k[:15], k, v; PK (x, k)      Citus: distributed
                                                                            by X (one shard per
                                                                            call-path lookup)
    by_day  cdrs                           day = date of k's first 8 bytes  native partitions by
                                           (µs since 1970), k, v;           day: retention drops
                                           PK (day, k); PARTITION BY RANGE  a partition
    cdr_day cdr_binding                    k PK, v, day = the date of the   retention deletes the
                                           CDR key inside k; index on day   dropped days' entries
    queue   outbox                         k = int8send(seq) PK, v,         webhook claims with
                                           claimed_by, claimed_until        FOR UPDATE SKIP LOCKED

Ordering by (x, k) or (day, k) is ordering by k, because x and day are non-decreasing
functions of k (a prefix; a clamped time); so a scan from key s is `(x, k) >= (x(s), s)`,
which the primary key's index serves. Nothing here reads the values: encrypted values
and keyed-hash keys (codec.py) are stored as they come.

Every table lives in the schema `sipmask`. Migrations are numbered; `migrate` applies the
missing ones, each in its own transaction, under a session advisory lock so that nodes
starting together (and `sipmask store migrate`) never race.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from sipmask.errors import StoreError
from sipmask.store import codec

SCHEMA = "sipmask"
X_PREFIX = 15                  # bytes of a route/xuse key that name its X (numbers.X_LENGTH)
EPOCH = date(1970, 1, 1)
LAST_DAY = (date(9999, 12, 31) - EPOCH).days
# Advisory lock keys (bigint): one name each, so they never collide with an application's.
MIGRATE_LOCK = 0x736970_6D61_0001       # "sipma" + 1: schema migrations
RULES_LOCK = 0x736970_6D61_0002         # every rules.py write transaction (one writer)
CDR_DAY_BYTES = 8
_U64 = struct.Struct(">Q")

Kind = Literal["plain", "by_x", "by_day", "cdr_day", "queue"]
_TYPES = {"x": "bytea", "k": "bytea", "day": "date"}     # the key columns' types
_INDEX_SEP = codec.SEP.encode()  # codec.cdr_index_key: binding id, US, the CDR's key


def day_of_key(key: bytes) -> int:
    """The CDR partition day (days since 1970) of a cdrs key: its first 8 bytes are the
    invite time in µs, big-endian. Shorter keys are padded with zeros and the day is
    clamped to 9999-12-31, so the day never decreases as the key grows."""
    micros: int = _U64.unpack(key[:CDR_DAY_BYTES].ljust(CDR_DAY_BYTES, b"\0"))[0]
    return min(micros // 86_400_000_000, LAST_DAY)


def cdr_index_day(key: bytes) -> int:
    """The day of the CDR a cdr_binding key points at (its part after the separator)."""
    return day_of_key(key.partition(_INDEX_SEP)[2])


def day_date(day: int) -> date:
    return EPOCH + timedelta(days=day)


def partition_name(day: int) -> str:
    return f"cdrs_{day_date(day):%Y%m%d}"


def partition_day(name: str) -> int | None:
    """The day a partition's name stands for, or None for a table that is not one."""
    if not name.startswith("cdrs_") or len(name) != 13 or not name[5:].isdigit():
        return None
    d = name[5:]
    return (date(int(d[:4]), int(d[4:6]), int(d[6:])) - EPOCH).days


@dataclass(frozen=True)
class Table:
    """One named database as a table, with the SQL the backend runs on it. `cols(key)`
    gives the key's columns in primary-key order (the derived column first); `row(key)`
    every column an insert derives from the key (cdr_day's day is not in the key)."""

    name: str
    kind: Kind

    @property
    def qname(self) -> str:
        return f"{SCHEMA}.{self.name}"

    @property
    def pk(self) -> tuple[str, ...]:
        return {"by_x": ("x", "k"), "by_day": ("day", "k")}.get(self.kind, ("k",))

    def cols(self, key: bytes) -> tuple[Any, ...]:
        if self.kind == "by_x":
            return (key[:X_PREFIX], key)
        if self.kind == "by_day":
            return (day_date(day_of_key(key)), key)
        return (key,)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.pk, "day") if self.kind == "cdr_day" else self.pk

    def row(self, key: bytes) -> tuple[Any, ...]:
        if self.kind == "cdr_day":
            return (key, day_date(cdr_index_day(key)))
        return self.cols(key)

    def key_arrays(self, keys: list[bytes]) -> tuple[list[Any], ...]:
        """The parameters that name `keys` in `get_many` and `put_many`: one array per
        primary-key column, in `pk` order (`cols`). cdr_day's day is a column but not in
        its key: no array."""
        return tuple(list(column) for column in zip(*map(self.cols, keys), strict=True))

    def _keys_from(self) -> str:
        """The rows of key_arrays' parameters, as a table `w` of the primary-key columns.
        The arrays go in binary (%b): psycopg escapes each element of a text array with a
        regular expression, which cost 1.5 ms of CPU per 256 keys here, binary 0.2 ms."""
        arrays = ", ".join(f"%b::{_TYPES[c]}[]" for c in self.pk)
        return f"unnest({arrays}) AS w({', '.join(self.pk)})"

    def _where(self) -> str:
        return " AND ".join(f"{c} = %s" for c in self.pk)

    def _tuple(self) -> str:
        return f"({', '.join(self.pk)})" if len(self.pk) > 1 else self.pk[0]

    def _bound(self) -> str:
        return f"({', '.join(['%s'] * len(self.pk))})" if len(self.pk) > 1 else "%s"

    def sql(self) -> dict[str, str]:
        q, pk, tup, bound = self.qname, ", ".join(self.pk), self._tuple(), self._bound()
        cols = (*self.columns, "v")
        values = ", ".join(["%s"] * len(cols))
        order = ", ".join(self.pk)
        desc = ", ".join(f"{c} DESC" for c in self.pk)
        return {
            "get": f"SELECT v FROM {q} WHERE {self._where()}",
            # The same with libpq's own placeholders, for a statement prepared with no
            # psycopg between (store/pg_loop.py).
            "get_numbered": f"SELECT v FROM {q} WHERE "
                            + " AND ".join(f"{c} = ${n}" for n, c in enumerate(self.pk, 1)),
            "put": f"INSERT INTO {q} ({', '.join(cols)}) VALUES ({values}) "
                   f"ON CONFLICT ({pk}) DO UPDATE SET v = EXCLUDED.v",
            # RETURNING: whether the row went in, as an answer to read (a row count is
            # not one in pipeline mode: store/postgres.py _once).
            "insert": f"INSERT INTO {q} ({', '.join(cols)}) VALUES ({values}) "
                      f"ON CONFLICT ({pk}) DO NOTHING RETURNING true",
            "delete": f"DELETE FROM {q} WHERE {self._where()}",
            "from": f"SELECT k, v FROM {q} WHERE {tup} >= {bound} ORDER BY {order} LIMIT %s",
            "after": f"SELECT k, v FROM {q} WHERE {tup} > {bound} ORDER BY {order} LIMIT %s",
            "last": f"SELECT k, v FROM {q} ORDER BY {desc} LIMIT %s",
            "before": f"SELECT k, v FROM {q} WHERE {tup} < {bound} ORDER BY {desc} LIMIT %s",
            # Keys named by every primary-key column, not k alone: (x, k) and (day, k) are
            # indexed only together (a count by k scanned the whole table). The same rows
            # either way: x and day are functions of k. Joined to the keys' rows, each key
            # is one probe of the primary key's index.
            "get_many": f"SELECT t.k, t.v FROM {q} t JOIN {self._keys_from()} USING ({pk})",
            "delete_many": f"DELETE FROM {q} t USING {self._keys_from()} WHERE "
                           + " AND ".join(f"t.{c} = w.{c}" for c in self.pk),
            "count": f"SELECT count(*) FROM {q}",
            # put_many, in one statement: how many of the keys were there,
            # and the rows written. Every part of a WITH runs on one snapshot (PostgreSQL
            # docs, "Data-Modifying Statements in WITH"), so the count sees the table as it
            # was before the INSERT.
            "put_many": f"WITH there AS (SELECT count(*) AS n FROM {q} t JOIN "
                        f"{self._keys_from()} USING ({pk})), put AS (INSERT INTO {q} "
                        f"({', '.join(cols)}) VALUES {{rows}} ON CONFLICT ({pk}) DO UPDATE "
                        "SET v = EXCLUDED.v) SELECT n FROM there",
            "insert_rows": f"INSERT INTO {q} ({', '.join(cols)}) VALUES {{rows}}",
            "upsert_many": f"INSERT INTO {q} ({', '.join(cols)}) VALUES {{rows}} "
                           f"ON CONFLICT ({pk}) DO UPDATE SET v = EXCLUDED.v",
            "row": f"({values})",
        }


# Schema version 1's tables, then those issue 14 added (binding history, CDRs by binding).
_V1 = (Table("meta", "plain"), Table("bindings", "plain"), Table("route", "by_x"),
       Table("expiry", "plain"), Table("xuse", "by_x"), Table("pools", "plain"),
       Table("tenants", "plain"), Table("audit", "plain"), Table("cdrs", "by_day"),
       Table("calls_up", "plain"), Table("outbox", "queue"), Table("outbox_state", "plain"))
_V2 = (Table("history", "by_x"), Table("history_end", "plain"),
       Table("cdr_binding", "cdr_day"))
TABLES: dict[str, Table] = {t.name: t for t in (*_V1, *_V2)}


def _create(t: Table) -> str:
    if t.kind == "by_x":
        return (f"CREATE TABLE {t.qname} (x bytea NOT NULL, k bytea NOT NULL, "
                "v bytea NOT NULL, PRIMARY KEY (x, k))")
    if t.kind == "by_day":
        return (f"CREATE TABLE {t.qname} (day date NOT NULL, k bytea NOT NULL, "
                "v bytea NOT NULL, PRIMARY KEY (day, k)) PARTITION BY RANGE (day)")
    if t.kind == "cdr_day":
        return (f"CREATE TABLE {t.qname} (k bytea PRIMARY KEY, day date NOT NULL, "
                "v bytea NOT NULL)")
    if t.kind == "queue":
        return (f"CREATE TABLE {t.qname} (k bytea PRIMARY KEY, v bytea NOT NULL, "
                "claimed_by text, claimed_until double precision)")
    return f"CREATE TABLE {t.qname} (k bytea PRIMARY KEY, v bytea NOT NULL)"


# Version 1: the tables, the outbox's sequence, and the KV schema version rules.py reads
# (1: records in clear). Version 2 (issue 14): the binding history and the CDR-by-binding
# index. The records themselves go to KV schema 2 (sealed) when a store first opens the
# database with its key (store/postgres.py: the SQL here never sees a key).
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [*(_create(t) for t in _V1),
         f"CREATE SEQUENCE {SCHEMA}.outbox_seq AS bigint",
         f"INSERT INTO {SCHEMA}.meta (k, v) VALUES "
         f"('\\x{b'schema_version'.hex()}'::bytea, '\\x{b'1'.hex()}'::bytea)"]),
    (2, [*(_create(t) for t in _V2),
         f"CREATE INDEX cdr_binding_day ON {SCHEMA}.cdr_binding (day)"]),
]
LATEST = MIGRATIONS[-1][0]


def partition_sql(day: int) -> str:
    # The last day a key can name (pg_schema.day_of_key clamps to it) is open-ended.
    after = "MAXVALUE" if day >= LAST_DAY else f"'{day_date(day + 1).isoformat()}'"
    return (f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{partition_name(day)} PARTITION OF "
            f"{SCHEMA}.cdrs FOR VALUES FROM ('{day_date(day).isoformat()}') TO ({after})")


# The events outbox as a queue (events/outbox.py): keys from a sequence, so nodes enqueue
# without a hot counter row; claims with FOR UPDATE SKIP LOCKED, so two nodes never take
# one event, and a lease (claimed_until, wall seconds) that lapses when a node dies.
OUTBOX_ENQUEUE = f"INSERT INTO {SCHEMA}.outbox (k, v) VALUES {{rows}} RETURNING k"
OUTBOX_ROW = f"(int8send(nextval('{SCHEMA}.outbox_seq')), %s)"
OUTBOX_OLDEST = f"SELECT k FROM {SCHEMA}.outbox ORDER BY k LIMIT 1"
OUTBOX_CLAIM = (
    f"UPDATE {SCHEMA}.outbox SET claimed_by = %(me)s, claimed_until = %(until)s "
    f"WHERE k IN (SELECT k FROM {SCHEMA}.outbox "
    "WHERE claimed_until IS NULL OR claimed_until < %(now)s OR claimed_by = %(me)s "
    "ORDER BY k LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING k, v")

PARTITIONS_SQL = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace "
    f"WHERE n.nspname = '{SCHEMA}' AND p.relname = 'cdrs'")


def current_version(conn: Any) -> int:
    """The schema version applied, 0 for a database sipmask never touched."""
    found = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.schema_migrations",)).fetchone()
    if found is None or found[0] is None:
        return 0
    row = conn.execute(f"SELECT max(version) FROM {SCHEMA}.schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(conn: Any, upto: int = LATEST) -> tuple[int, int]:
    """Apply the missing migrations up to `upto` (tests make older schemas with it) on an
    autocommit connection; returns (from, to). StoreError when the database was migrated
    by a newer sipmask."""
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
    try:
        before = current_version(conn)
        if before > LATEST:
            raise StoreError(f"the database has schema version {before}; this sipmask "
                             f"knows up to {LATEST}")
        for version, statements in MIGRATIONS:
            if version <= before or version > upto:
                continue
            with conn.transaction():
                if version == 1:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
                    conn.execute(f"CREATE TABLE {SCHEMA}.schema_migrations (version int "
                                 "PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"INSERT INTO {SCHEMA}.schema_migrations (version) VALUES (%s)",
                             (version,))
        return before, max(before, min(upto, LATEST))
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
