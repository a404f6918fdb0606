"""A store written before real numbers were sealed (schema 1) is sealed when it is opened
(issue 14 §2): once, with progress in the log, resumably after kill -9, and its file is
compacted so the pages that held the plaintext leave it. Then `rekey` moves a store to a
new key the same way. On PostgreSQL the same, in one transaction, then VACUUM FULL: the
database's data files (and pg_dump) keep neither the plaintext nor the old key's values.

The schema 1 store is written here byte for byte as sipmask wrote it before (the layouts
of the old codec.py, cdr/store.py and events/outbox.py, spelled out in `legacy_store`)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import lmdb
import pytest
import structlog

from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrLog
from sipmask.clock import FakeClock
from sipmask.errors import StoreError
from sipmask.events.outbox import Outbox, new_event
from sipmask.store import LmdbStore, codec
from sipmask.store import lmdb as store_lmdb
from sipmask.store.base import Binding, PoolRange
from sipmask.store.crypto import KEY_BYTES, KeyMismatch, Keyring
from sipmask.store.rules import Txn
from tests.support.postgres import DATABASE, PgServer
from tests.support.store import A, C, D, every_record, forms

if TYPE_CHECKING:
    from sipmask.store.lmdb import AnyStore

NOW = 1_800_000_000.0
POOL = PoolRange("demo", "700100000000000", "700100009999999", "config")
SEP = "\x1f"


def x_of(i: int) -> str:
    return f"7001{i // 4:011d}"


def parties(i: int) -> tuple[str, str]:
    return f"138{i:08d}", f"139{i:08d}"


LEGACY_DATABASES = ("meta", "bindings", "route", "expiry", "xuse", "pools", "tenants",
                    "audit", "cdrs", "calls_up", "outbox", "outbox_state")


def legacy_store(path: Path, count: int) -> list[Binding]:
    """A schema 1 LMDB store (legacy_records)."""
    path.mkdir(parents=True)
    env = lmdb.open(str(path), max_dbs=32, map_size=256 << 20, subdir=True)
    dbs = {name: env.open_db(name.encode()) for name in LEGACY_DATABASES}
    rows, made = legacy_records(count)
    with env.begin(write=True) as txn:
        for db, key, value in rows:
            txn.put(key, value, db=dbs[db])
    env.close()
    return made


def legacy_records(count: int) -> tuple[list[tuple[str, bytes, bytes]], list[Binding]]:
    """A schema 1 store's records: `count` AXB bindings (four per X), one AXN, their audit
    entries, a CDR and a journal entry per binding, an event per binding, as written
    before; and the bindings."""
    made: list[Binding] = []
    out: list[tuple[str, bytes, bytes]] = []

    def put(db: str, key: bytes, value: bytes) -> None:
        out.append((db, key, value))
    put("meta", b"schema_version", b"1")
    put("tenants", b"demo", codec.encode_json({"source": "config"}))
    put("pools", POOL.first.encode(), codec.encode_pool(POOL))
    rows = [Binding(f"{i:016x}", "axb", "demo", x_of(i), *parties(i), NOW, NOW + 7200)
            for i in range(count)]
    rows.append(Binding("f" * 16, "axn", "demo", "700100009999999", C, None, NOW, None))
    for seq, b in enumerate(rows, 1):
        raw = codec.encode_plain_binding(b)          # version 2: the old encode_binding
        put("bindings", b.id.encode(), raw)
        for number in (b.a, b.b) if b.b else (None,):
            put("route", (b.x + (number or "")).encode(), raw)
        if b.expires_at is not None:
            put("expiry", codec.expiry_key(b.expires_at, b.id), b"")
        put("xuse", b.x.encode(), codec.encode_use(b.mode, 4 if b.b else 1))
        summary = codec.binding_summary(b)
        put("audit", codec.audit_key(NOW, seq),
            b"\x01" + SEP.join((str(seq), repr(NOW), "demo", "import", "create", b.id,
                                summary)).encode())
        cdr = Cdr(call_id=f"c{seq}", tenant="demo", binding_id=b.id, x=b.x, caller=b.a,
                  callee=b.b, direction="a_to_b", invite_at=NOW + seq, ring_at=None,
                  answer_at=NOW + seq, end_at=NOW + seq + 5, duration_s=5.0,
                  release_side="caller", sip_status=200, unconnected_cause="none")
        put("cdrs", struct.pack(">Q", int(cdr.invite_at * 1_000_000)) + b"c%d" % seq,
            cdr.encode())
        put("calls_up", b"n1\x1fu%d" % seq, cdr.encode())
        event = new_event("cdr", call_id=cdr.call_id, binding_id=b.id, tenant="demo",
                          x=b.x, at=NOW, cdr=cdr)
        put("outbox", struct.pack(">Q", seq), event.encode())
        made.append(b)
    put("calls_up", b"\x00heartbeat\x00n1", struct.pack(">d", NOW))
    put("outbox_state", b"seq", struct.pack(">Q", len(rows)))
    put("meta", b"audit_seq", codec.u64(len(rows)))
    return out, made


def numbers_left(path: Path, made: list[Binding]) -> list[str]:
    """Real numbers found in data.mdb's bytes or in any record (the first three digits)."""
    raw = (path / "data.mdb").read_bytes()
    records = b"\n".join(every_record(path))
    found = []
    for b in made[:50] + made[-2:]:
        for number in (b.a, b.b):
            if number and any(f in raw or f in records for f in forms(number)):
                found.append(number[:3])
    return found


def check_sealed(store: AnyStore, made: list[Binding]) -> None:
    """Everything routes and reads back, and every record is sealed with the store's key."""
    for b in made[:: max(1, len(made) // 50)] + made[-2:]:
        assert store.route(b.x, b.a, NOW) == b
        if b.b:
            assert store.route(b.x, b.b, NOW) == b
    keys = store.keys

    def generations(txn: Txn) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for db in ("bindings", "route", "audit", "cdrs", "outbox", "calls_up"):
            out[db] = {raw[1] for key, raw in txn.scan(db)
                       if not (db == "calls_up" and key.startswith(b"\x00"))}
        return out
    assert store.read(generations) == {db: {keys.generation} for db in (
        "bindings", "route", "audit", "cdrs", "outbox", "calls_up")}
    counts = store.read(lambda txn: {db: sum(1 for _ in txn.scan(db))
                                     for db in ("bindings", "route")})
    assert counts == {"bindings": len(made), "route": 2 * (len(made) - 1) + 1}
    audit = store.audit(limit=len(made) + 5)
    assert {(b.id, b.a) for b in made} <= {(e.subject, e.data["a"]) for e in audit}
    log = CdrLog(store)
    assert [(c.binding_id, c.caller) for c in log.list()] == [(b.id, b.a) for b in made]
    assert [c.caller for c in log.for_binding(made[0].id)] == [made[0].a]
    assert sorted(c.caller for c in log.calls_up()) == sorted(b.a for b in made)
    outbox = Outbox(store)
    outbox.claimer = "check_sealed"     # PostgreSQL: a second check renews its own claims
    assert [e.cdr.caller for _, e in outbox.peek(3) if e.cdr] == [b.a for b in made[:3]]


def test_a_store_in_clear_is_sealed_once_on_open_into_a_new_file(tmp_path: Path) -> None:
    path, key = tmp_path / "s.lmdb", tmp_path / "k"
    made = legacy_store(path, 40)
    assert numbers_left(path, made)                       # the old store shows them
    with structlog.testing.capture_logs() as logs:
        store = LmdbStore(path, FakeClock(), key_file=key)
    try:
        assert key.stat().st_size == KEY_BYTES            # made on this first start
        check_sealed(store, made)
        assert store.schema_version() == codec.SCHEMA_VERSION
        assert store.read(lambda txn: txn.get("meta", b"audit_seq")) == codec.u64(len(made))
        assert sorted(p.name for p in path.iterdir()) == ["data.mdb", "lock.mdb"]
        repaired = CdrLog(store).repair(NOW + 100_000)     # the journal still repairs
        assert len(repaired) == len(made) and repaired[0].release_side == "sipmask"
    finally:
        store.close()
    assert numbers_left(path, made) == []                 # not in any page, live or free
    events = [e["event"] for e in logs]
    assert events == ["store.sealing", "store.sealing_done"]
    assert logs[0]["records"] > len(made) and logs[1]["records"] > len(made)
    assert not any(b.a in repr(e) for e in logs for b in made)    # counts only, no number
    env = lmdb.open(str(path), max_dbs=32)
    before = env.info()["last_txnid"]
    env.close()
    with structlog.testing.capture_logs() as again:      # once: the next open writes nothing
        LmdbStore(path, FakeClock(), key_file=key).close()
    env = lmdb.open(str(path), max_dbs=32)
    assert env.info()["last_txnid"] == before and again == []
    env.close()


def test_a_large_store_logs_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made = legacy_store(tmp_path / "s", 5000)
    monkeypatch.setattr(store_lmdb, "PROGRESS_EVERY_S", 0.0)
    with structlog.testing.capture_logs() as logs:
        LmdbStore(tmp_path / "s", key_file=tmp_path / "k").close()
    progress = [e for e in logs if e["event"] == "store.sealing" and "records_done" in e]
    assert len(progress) >= 5 and progress[-1]["records_done"] > progress[0]["records_done"]
    assert all(e["records"] >= len(made) for e in progress)


_KILLED = """
import os, signal, sys
from sipmask.store import codec, lmdb
calls = 0
real = codec.encode_binding
def encode(b, keys):
    global calls
    calls += 1
    if calls == 3000:          # half way through the bindings, mid-transaction
        os.kill(os.getpid(), signal.SIGKILL)
    return real(b, keys)
codec.encode_binding = encode
lmdb.LmdbStore(sys.argv[1], key_file=sys.argv[2])
"""


def test_sealing_killed_midway_leaves_the_old_store_and_finishes_next_start(
        tmp_path: Path) -> None:
    path, key = tmp_path / "s", tmp_path / "k"
    made = legacy_store(path, 6000)
    old = set(every_record(path))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    done = subprocess.run([sys.executable, "-c", _KILLED, str(path), str(key)], env=env,
                          check=False, timeout=120, capture_output=True)
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    # Untouched (but for the empty databases opening it adds): the copy was aside.
    assert set(every_record(path)) - old == {b"cdr_binding", b"history", b"history_end"}
    assert (path / "copy.tmp").is_dir()                     # what the crash left
    store = LmdbStore(path, FakeClock(), key_file=key)
    try:
        check_sealed(store, made)
        assert not (path / "copy.tmp").exists()
    finally:
        store.close()
    assert numbers_left(path, made) == []


_OPEN_AND_WAIT = """
import sys, time
from sipmask.store import lmdb
store = lmdb.LmdbStore(sys.argv[1], key_file=sys.argv[2])
print("open", store.keys.fingerprint, flush=True)
time.sleep(1.0)        # hold the store open while the other may still be waiting
store.close()
"""


def test_processes_waiting_together_to_seal_do_it_once(tmp_path: Path) -> None:
    # Two processes find the store in clear while a third keeps it open, so both wait for
    # it. When it goes, one copies; the other, still waiting, sees the store sealed and
    # just opens it (before: it copied again once the first let go, from the sealed file).
    path, key = tmp_path / "s", tmp_path / "k"
    made = legacy_store(path, 2000)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    with subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline() == "open\n"
        waiting = [subprocess.Popen([sys.executable, "-c", _OPEN_AND_WAIT, str(path), str(key)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for _ in range(2)]
        time.sleep(1.5)                  # both started, found it in clear, and wait
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    outs = [p.communicate(timeout=120) for p in waiting]
    assert [p.returncode for p in waiting] == [0, 0], [err[-1000:] for _, err in outs]
    opened = {line.split()[1] for out, _ in outs for line in out.splitlines()
              if line.startswith("open ")}
    assert len(opened) == 1                                   # one key, one store
    logs = "".join(out + err for out, err in outs)
    assert logs.count("store.sealing_done") == 1
    store = LmdbStore(path, FakeClock(), key_file=key)
    try:
        check_sealed(store, made)
    finally:
        store.close()


_HOLDER = """
import sys
import lmdb
env = lmdb.open(sys.argv[1], max_dbs=32)
print("open", flush=True)
sys.stdin.readline()
env.close()
"""


def test_sealing_waits_for_the_store_to_itself_and_says_why_when_it_cannot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, key = tmp_path / "s", tmp_path / "k"
    made = legacy_store(path, 20)
    monkeypatch.setattr(store_lmdb, "ALONE_WAIT_S", 0.3)
    with subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        try:
            assert holder.stdout.readline() == "open\n"
            with pytest.raises(StoreError, match="another process has it open"):
                LmdbStore(path, FakeClock(), key_file=key)
            assert numbers_left(path, made)                  # nothing was done
        finally:
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait(timeout=30)
    store = LmdbStore(path, FakeClock(), key_file=key)       # alone now
    try:
        check_sealed(store, made)
    finally:
        store.close()
    assert numbers_left(path, made) == []


# -- rekey ------------------------------------------------------------------------------------
def new_key(path: Path) -> bytes:
    data = os.urandom(KEY_BYTES)
    path.write_bytes(data)
    path.chmod(0o600)
    return data


def test_rekey_seals_everything_anew_and_the_old_key_stops_opening(tmp_path: Path) -> None:
    path, old = tmp_path / "s", tmp_path / "old"
    made = legacy_store(path, 30)
    clock = FakeClock()
    store = LmdbStore(path, clock, key_file=old)
    gone = store.create(mode="axb", tenant="demo", a=D, b=A, x="700100000000100")
    clock.advance(10)
    store.delete(gone.id)                                  # a history record to reseal
    before = store.keys
    sealed_before = store.read(lambda txn: [raw[-28:] for db in ("bindings", "audit", "cdrs")
                                            for _, raw in txn.scan(db)])   # nonce + tag
    master = new_key(tmp_path / "new")
    with structlog.testing.capture_logs() as logs:
        after = store.rekey(master)
    assert [e["event"] for e in logs] == ["store.rekey", "store.rekey_done"]
    assert store.keys is after and after.generation == before.generation + 1
    check_sealed(store, made)
    assert store.trace("700100000000100", gone.created_at + 1)[0].binding == gone
    store.close()
    # No value sealed with the old key is left anywhere in the new file.
    new_bytes = (path / "data.mdb").read_bytes()
    assert len(sealed_before) > 90 and not any(t in new_bytes for t in sealed_before)
    with pytest.raises(KeyMismatch, match=f"sealed with key {after.fingerprint}"):
        LmdbStore(path, key_file=old)
    reopened = LmdbStore(path, FakeClock(), key_file=tmp_path / "new")
    try:
        check_sealed(reopened, made)
        assert reopened.keys.fingerprint == Keyring(master).fingerprint
        with pytest.raises(StoreError, match="store's own key"):
            reopened.rekey(master)
    finally:
        reopened.close()


def test_a_rekey_cut_short_leaves_the_store_on_its_old_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, old = tmp_path / "s", tmp_path / "old"
    made = legacy_store(path, 50)
    store = LmdbStore(path, FakeClock(), key_file=old)
    real = codec.encode_binding
    calls = 0

    def failing(b: Binding, keys: Keyring) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 30:
            raise OSError("disk gone")
        return real(b, keys)
    monkeypatch.setattr(codec, "encode_binding", failing)
    with pytest.raises(OSError):
        store.rekey(new_key(tmp_path / "new"))
    monkeypatch.setattr(codec, "encode_binding", real)
    try:
        check_sealed(store, made)                 # reopened, on the old key, whole
    finally:
        store.close()
    assert not (path / "copy.tmp").exists()
    LmdbStore(path, key_file=old).close()


# -- PostgreSQL -------------------------------------------------------------------------------
def legacy_database(dsn: str, count: int) -> list[Binding]:
    """The test database as the sipmask before issue 14 left it: schema 1, legacy_records
    in clear, and the planner's statistics sampled from them (autovacuum's ANALYZE)."""
    import psycopg

    from sipmask.store.pg_schema import SCHEMA, TABLES, day_of_key, migrate, partition_sql
    rows, made = legacy_records(count)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        migrate(conn, upto=1)
        for db, key, value in rows:
            t = TABLES[db]
            if t.kind == "by_day":
                conn.execute(partition_sql(day_of_key(key)))
            conn.execute(t.sql()["put"], (*t.row(key), value))
        conn.execute("ANALYZE")
    return made


def data_files(server: PgServer, dsn: str) -> bytes:
    """Every file of the database's directory after a CHECKPOINT: what its disk holds
    (tables, indexes, the catalog with its statistics; the WAL aside)."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        row = conn.execute("SELECT oid FROM pg_database "
                           "WHERE datname = current_database()").fetchone()
    assert row is not None
    files = sorted((server.datadir / "base" / str(row[0])).iterdir())
    return b"".join(f.read_bytes() for f in files if f.is_file())


def planner_samples(dsn: str) -> bytes:
    """The values the planner's statistics keep of sipmask's tables (pg_stats), as text:
    pg_statistic's files compress them, so they are read through SQL."""
    import psycopg
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT coalesce(histogram_bounds::text, '') || "
                            "coalesce(most_common_vals::text, '') FROM pg_stats "
                            "WHERE schemaname = 'sipmask'").fetchall()
    return "".join(r[0] for r in rows).encode()


def in_clear(blob: bytes, made: list[Binding]) -> list[str]:
    """Real numbers of `made` found in blob, as text or as pg_dump's hex (first digits)."""
    return [number[:3] for b in made[:20] + made[-2:] for number in (b.a, b.b)
            if number and any(f in blob or f.hex().encode() in blob for f in forms(number))]


def test_a_postgres_database_in_clear_is_sealed_once_on_first_open(
        pg_server: PgServer, pg_dsn: str, pg_key: Path, tmp_path: Path) -> None:
    from sipmask.store.postgres import PostgresStore
    made = legacy_database(pg_dsn, 40)
    assert in_clear(data_files(pg_server, pg_dsn), made)          # the old database
    assert in_clear(pg_server.pg_dump(DATABASE), made)            # shows them, and so do
    assert in_clear(planner_samples(pg_dsn), made)                # the planner's samples
    with structlog.testing.capture_logs() as logs:
        store = PostgresStore(pg_dsn, FakeClock(), pool_size=2, call_workers=1,
                              key_file=pg_key)
    try:
        check_sealed(store, made)
        assert store.schema_version() == codec.SCHEMA_VERSION
        assert store.read(lambda txn: txn.get("meta", b"audit_seq")) == codec.u64(len(made))
        repaired = CdrLog(store).repair(NOW + 100_000)     # the journal still repairs
        assert len(repaired) == len(made) and repaired[0].release_side == "sipmask"
    finally:
        store.close()
    assert [e["event"] for e in logs] == ["store.sealing", "store.sealing_done"]
    assert logs[0]["records"] > len(made) and logs[1]["records"] > len(made)
    assert not any(b.a in repr(e) for e in logs for b in made)    # counts only, no number
    assert in_clear(pg_server.pg_dump(DATABASE), made) == []
    assert in_clear(data_files(pg_server, pg_dsn), made) == []    # no dead row
    assert in_clear(planner_samples(pg_dsn), made) == []          # sampled again, sealed
    with structlog.testing.capture_logs() as again:              # once: sealed already
        PostgresStore(pg_dsn, FakeClock(), pool_size=2, call_workers=1,
                      key_file=pg_key).close()
    assert again == []
    new_key(tmp_path / "other")
    with pytest.raises(KeyMismatch, match=r"store\.key_file does not match this store"):
        PostgresStore(pg_dsn, pool_size=2, call_workers=1, key_file=tmp_path / "other")


def sealed_tails(store: AnyStore) -> list[bytes]:
    """The nonce and tag of every sealed binding, audit entry, CDR and history record."""
    return store.read(lambda txn: [raw[-28:] for db in ("bindings", "audit", "cdrs", "history")
                                   for _, raw in txn.scan(db)])


def test_rekey_on_postgres_waits_for_the_database_to_itself_and_leaves_no_old_value(
        pg_server: PgServer, pg_dsn: str, pg_key: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sipmask.store import postgres
    made = legacy_database(pg_dsn, 30)
    clock = FakeClock()
    store = postgres.PostgresStore(pg_dsn, clock, pool_size=2, call_workers=1,
                                   key_file=pg_key)
    try:
        gone = store.create(mode="axb", tenant="demo", a=D, b=A, x="700100000000100")
        clock.advance(10)
        store.delete(gone.id)                                  # a history record to reseal
        before = store.keys
        tails = sealed_tails(store)
        master = new_key(tmp_path / "new")
        node = postgres.PostgresStore(pg_dsn, pool_size=2, call_workers=1, key_file=pg_key)
        monkeypatch.setattr(postgres, "ALONE_WAIT_S", 0.3)
        try:
            with pytest.raises(StoreError, match="other sipmask session"):
                store.rekey(master)                            # a node is still connected
        finally:
            node.close()
        assert store.keys is before
        with structlog.testing.capture_logs() as logs:
            after = store.rekey(master)
        assert [e["event"] for e in logs] == ["store.rekey", "store.rekey_done"]
        assert store.keys is after and after.generation == before.generation + 1
        check_sealed(store, made)
        assert store.trace("700100000000100", gone.created_at + 1)[0].binding == gone
    finally:
        store.close()
    blob = data_files(pg_server, pg_dsn) + pg_server.pg_dump(DATABASE)
    assert len(tails) > 90
    assert not any(t in blob or t.hex().encode() in blob for t in tails)
    with pytest.raises(KeyMismatch, match=f"sealed with key {after.fingerprint}"):
        postgres.PostgresStore(pg_dsn, pool_size=2, call_workers=1, key_file=pg_key)
    reopened = postgres.PostgresStore(pg_dsn, FakeClock(), pool_size=2, call_workers=1,
                                      key_file=tmp_path / "new")
    try:
        check_sealed(reopened, made)
        with pytest.raises(StoreError, match="store's own key"):
            reopened.rekey(master)
    finally:
        reopened.close()


def test_a_rekey_on_postgres_cut_short_leaves_it_on_its_old_key(
        pg_dsn: str, pg_key: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sipmask.store.postgres import PostgresStore
    made = legacy_database(pg_dsn, 50)
    store = PostgresStore(pg_dsn, FakeClock(), pool_size=2, call_workers=1, key_file=pg_key)
    real = codec.encode_binding
    calls = 0

    def failing(b: Binding, keys: Keyring) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 30:
            raise OSError("disk gone")
        return real(b, keys)
    monkeypatch.setattr(codec, "encode_binding", failing)
    try:
        with pytest.raises(OSError):
            store.rekey(new_key(tmp_path / "new"))
        monkeypatch.setattr(codec, "encode_binding", real)
        check_sealed(store, made)              # one transaction: rolled back whole
    finally:
        store.close()
    PostgresStore(pg_dsn, pool_size=2, call_workers=1, key_file=pg_key).close()
