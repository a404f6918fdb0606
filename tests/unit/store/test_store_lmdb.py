"""What only LMDB does: encoding versions, reopening, the map growing, the shared env."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from sipmask.clock import FakeClock
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.errors import ConfigError, StoreError
from sipmask.store import LmdbStore, MemoryStore, codec
from sipmask.store.base import Binding, BindingRequest, BindingStore
from sipmask.store.crypto import Keyring
from sipmask.store.rules import KeyExists, RuleStore, Txn
from tests.support.store import TENANTS, A, B, X

KEYS = Keyring.generate()


def round_trip(b: Binding) -> Binding:
    return codec.decode_binding(codec.encode_binding(b, KEYS), KEYS)


def binding(**extra: object) -> Binding:
    return Binding("id1", "axb", "demo", X, A, B, 1.5, None, **extra)  # type: ignore[arg-type]


def test_binding_encoding_round_trips_with_and_without_policy_fields() -> None:
    plain = binding()
    assert round_trip(plain) == plain
    rich = binding(direction="a_to_b", max_duration_s=600, max_concurrent=2,
                   blacklist=("13700000003",))
    assert round_trip(rich) == rich
    axn = Binding("id2", "axn", "demo", X, A, None, 2.0, 9.25)
    assert round_trip(axn) == axn


def test_a_newer_optional_field_is_ignored_a_newer_version_refused() -> None:
    # The policy JSON is sealed with a and b: a newer field is added before sealing.
    plain = codec.encode_plain_binding(binding(max_duration_s=60))
    head, _, ext = plain.rpartition(codec.SEP.encode())
    newer = json.loads(ext) | {"callback_url": "http://127.0.0.1/x"}
    decoded = codec.decode_plain_binding(head + codec.SEP.encode()
                                         + json.dumps(newer).encode())
    assert decoded == binding(max_duration_s=60)
    raw = codec.encode_binding(binding(max_duration_s=60), KEYS)
    clear_end = 4 + int.from_bytes(raw[2:4], "big")
    *fields, ext = KEYS.open(raw, clear_end).decode().split(codec.SEP)
    text = codec.SEP.join((*fields, json.dumps(json.loads(ext) | {"callback_url": "x"})))
    resealed = KEYS.seal(codec.BINDING_SEALED, raw[4:clear_end], text.encode())
    assert codec.decode_binding(resealed, KEYS) == binding(max_duration_s=60)
    with pytest.raises(codec.RecordVersionError):
        codec.decode_binding(b"\x04" + raw[1:], KEYS)


def test_version_1_records_written_before_still_decode() -> None:
    # Version 1 kept the times as text; a store written then must keep routing.
    v1 = "\x1f".join(("id1", "axb", "demo", X, A, B, "1.5", "", '{"max_duration_s":60}'))
    assert codec.decode_binding(b"\x01" + v1.encode(), KEYS) == binding(max_duration_s=60)
    axn = "\x1f".join(("id2", "axn", "demo", X, A, "", "2.0", "9.25", ""))
    assert codec.decode_binding(b"\x01" + axn.encode(), KEYS) == Binding(
        "id2", "axn", "demo", X, A, None, 2.0, 9.25)


def test_times_are_exact_and_no_expiry_survives_the_binary_encoding() -> None:
    for created, expires in ((0.0, None), (1795472914.1239839, 1795480114.1239843),
                             (1.5, 0.001)):
        b = Binding("id3", "axb", "demo", X, A, B, created, expires)
        assert round_trip(b) == b


def open_lmdb(path: Path, clock: FakeClock, map_size: int = 1 << 20) -> LmdbStore:
    store = LmdbStore(path, clock, map_size=map_size, rng=random.Random(1))
    store.sync_tenants(TENANTS)
    return store


def test_reopen_keeps_everything_and_writes_a_schema_version(tmp_path: Path) -> None:
    clock = FakeClock()
    store = open_lmdb(tmp_path / "s", clock)
    made = store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    store.close()
    again = open_lmdb(tmp_path / "s", clock)
    assert again.get(made.id) == made
    assert again.route(X, B, clock.wall()) == made
    assert again.schema_version() == codec.SCHEMA_VERSION
    assert [e.action for e in again.audit()].count("pool_add") == 2   # seeded once only
    again.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store = open_lmdb(tmp_path / "s", FakeClock())
    with store.env.begin(write=True) as txn:
        txn.put(b"schema_version", b"9", db=store.db("meta"))
    store.close()
    with pytest.raises(StoreError, match="schema 9"):
        LmdbStore(tmp_path / "s")


def test_the_map_grows_when_full(tmp_path: Path) -> None:
    clock = FakeClock()
    store = open_lmdb(tmp_path / "s", clock, map_size=64 << 10)
    store.add_pool("demo", "700500000000000-700500000099999")
    start = store.env.info()["map_size"]
    rows = ((i, BindingRequest("axb", f"138{i:08d}", f"139{i:08d}", tenant="demo"))
            for i in range(3000))
    assert all(o.binding for o in store.create_many(rows, batch=1000))
    assert store.env.info()["map_size"] > start
    store.create(mode="axb", tenant="demo", a=A, b=B, x=X)   # single writes grow too
    assert len(store.list(limit=10_000)) == 3001
    assert store.disk_bytes() > 0
    store.close()


def test_the_env_holds_cdrs_and_outbox_for_later_modules(tmp_path: Path) -> None:
    store = open_lmdb(tmp_path / "s", FakeClock())
    with store.env.begin(write=True) as txn:
        txn.put(b"k", b"v", db=store.db("cdrs"))
        txn.put(b"k", b"v", db=store.db("outbox"))
    with store.env.begin() as txn:
        names = [k for k, _ in txn.cursor()]
    assert b"cdrs" in names and b"outbox" in names and b"bindings" in names
    store.close()


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_config_pools_that_overlap_are_a_config_error_and_leave_nothing(
        tmp_path: Path, kind: str) -> None:
    clash = {"demo": TENANTS["demo"],
             "other": TenantConfig("t", (NumberRange.parse("700100000000005"),))}
    store = MemoryStore(FakeClock()) if kind == "memory" else LmdbStore(tmp_path / "s")
    with pytest.raises(ConfigError) as exc:
        store.sync_tenants(clash)
    assert exc.value.path == "tenants.other.pools" and "tenant demo" in str(exc.value)
    assert store.list_pools() == [] and store.tenants() == [] and store.audit() == []
    store.close()


def test_a_config_range_dropped_from_the_config_goes_unless_used(tmp_path: Path) -> None:
    clock = FakeClock()
    store = open_lmdb(tmp_path / "s", clock)
    store.create(mode="axn", tenant="acme", a=A)
    store.sync_tenants({"demo": TenantConfig("t", ()), "acme": TenantConfig("t", ())})
    assert [u.pool.tenant for u in store.list_pools()] == ["acme"]   # still used: kept
    store.close()


def test_a_full_environment_is_not_written_by_just_opening(tmp_path: Path) -> None:
    clock = FakeClock()
    open_lmdb(tmp_path / "s", clock).close()
    env = lmdb.open(str(tmp_path / "s"), max_dbs=16)
    before = env.info()["last_txnid"]
    env.close()
    open_lmdb(tmp_path / "s", clock).close()
    env = lmdb.open(str(tmp_path / "s"), max_dbs=16)
    assert env.info()["last_txnid"] == before
    env.close()


def test_both_stores_satisfy_the_protocol(tmp_path: Path) -> None:
    # mypy checks the assignment structurally; the call checks the shared behaviour.
    stores: list[BindingStore] = [MemoryStore(FakeClock(), TENANTS),
                                  open_lmdb(tmp_path / "s", FakeClock())]
    for store in stores:
        made = store.create(mode="axn", tenant="acme", a=A)
        assert store.route(made.x, B, FakeClock().wall()) == made
        store.close()


def test_a_decoded_binding_is_a_binding_with_every_default() -> None:
    # decode_binding fills the NamedTuple from a tuple (Binding._make), not by keyword: the
    # defaults it writes for unset policy fields must be the class's own, field by field.
    decoded = round_trip(binding())
    assert type(decoded) is Binding and len(decoded) == len(Binding._fields)
    for name in Binding._fields:
        assert getattr(decoded, name) == getattr(binding(), name)
    for name, default in Binding._field_defaults.items():
        assert getattr(decoded, name) == default
    assert hash(decoded) == hash(binding()) and decoded == binding()
    made = codec.new_binding("id1", "axb", "demo", X, A, B, 1.5, None)
    assert type(made) is Binding and made == binding()


def test_other_modules_keep_records_beside_bindings(store: RuleStore) -> None:
    # CDRs and the event outbox use read()/write() on named databases of the same store.
    store.write(lambda txn: txn.put("cdrs", b"k1", b"v1"))
    assert store.read(lambda txn: txn.get("cdrs", b"k1")) == b"v1"

    def put_then_fail(txn: Txn) -> None:
        txn.put("outbox", b"k", b"v")
        raise RuntimeError("abort")
    with pytest.raises(RuntimeError):
        store.write(put_then_fail)
    assert store.read(lambda txn: txn.get("outbox", b"k")) is None   # rolled back


def test_audit_summary_text_is_the_json_of_the_binding() -> None:
    # binding_summary builds the JSON text by hand on the import path; it must read back
    # exactly as the encoder would have written it, for AXB, AXN, no expiry and odd input.
    cases = [binding(), Binding("id2", "axn", "demo", X, A, None, 2.0, 9.25),
             Binding("id3", "axb", "demo", X, "+86 138\"x", B, 1.0, 1e21)]
    for b in cases:
        text = codec.binding_summary(b)
        assert json.loads(text) == {"mode": b.mode, "x": b.x, "a": b.a, "b": b.b,
                                    "expires_at": b.expires_at}
    assert codec.binding_summary(binding()) == json.dumps(
        {"mode": "axb", "x": X, "a": A, "b": B, "expires_at": None}, separators=(",", ":"))


def test_binding_ids_sort_by_creation_time_and_keep_52_random_bits() -> None:
    # Time-first ids keep a bulk import appending to the bindings B-tree (codec.new_id).
    ids = [codec.new_id(t) for t in (0.0, 1.0, 1.0005, 1795472914.123, 1795472914.124)]
    assert ids[0] < ids[1] and ids[2] < ids[3] < ids[4]
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    assert len({codec.new_id(5.0) for _ in range(1000)}) == 1000


def test_binding_ids_stay_distinct_across_random_pool_refills() -> None:
    ids = {codec.new_id(7.0) for _ in range(3000)}    # 3000 x 7 bytes: several 4 kB draws
    assert len(ids) == 3000 and all(len(i) == 24 for i in ids)


def test_put_many_appends_past_the_end_inserts_elsewhere_and_refuses_disorder(
        store: RuleStore) -> None:
    def put(items: list[tuple[bytes, bytes]]) -> int:
        return store.write(lambda txn: txn.put_many("cdrs", items))
    assert put([(b"b", b"1"), (b"d", b"2")]) == 2             # empty: appended
    assert put([(b"a", b"3"), (b"c", b"4")]) == 2             # before the end: inserted
    assert put([(b"e", b"5"), (b"f", b"6")]) == 2             # past the end: appended
    assert put([(b"a", b"x"), (b"g", b"7")]) == 1                    # a overwritten
    assert store.read(lambda txn: list(txn.scan("cdrs"))) == [
        (b"a", b"x"), (b"b", b"1"), (b"c", b"4"), (b"d", b"2"), (b"e", b"5"), (b"f", b"6"),
        (b"g", b"7")]
    if isinstance(store, LmdbStore):   # MDB_APPEND would skip a key out of order silently
        with pytest.raises(StoreError, match="out of order"):
            put([(b"y", b"8"), (b"x", b"9")])
        assert store.read(lambda txn: txn.get("cdrs", b"y")) is None   # rolled back


def test_insert_rows_refuses_a_key_there_and_undoes_the_whole_transaction(
        store: RuleStore) -> None:
    # Txn.insert_rows asks nothing back (on PostgreSQL the clash surfaces at the COMMIT
    # or the next wait, not at the call): what the transaction wrote before is undone too.
    store.write(lambda txn: txn.put_rows("cdrs", [(b"b", b"1")]))

    def clash(txn: Txn) -> None:
        txn.put("meta", b"before", b"1")
        txn.insert_rows("cdrs", [(b"a", b"2"), (b"b", b"2"), (b"c", b"2")])
        txn.put("meta", b"after", b"1")
    with pytest.raises(KeyExists):
        store.write(clash)
    assert store.read(lambda txn: list(txn.scan("cdrs"))) == [(b"b", b"1")]
    assert store.read(lambda txn: txn.get_many("meta", [b"before", b"after"])) == {}
    store.write(lambda txn: txn.insert_rows("cdrs", [(b"a", b"3"), (b"c", b"3")]))
    assert store.read(lambda txn: list(txn.scan("cdrs"))) == [
        (b"a", b"3"), (b"b", b"1"), (b"c", b"3")]


def test_get_later_answers_as_get_did_when_asked(store: RuleStore) -> None:
    store.write(lambda txn: txn.put("meta", b"k", b"1"))

    def run(txn: Txn) -> tuple[bytes | None, bytes | None, list[tuple[bytes, bytes]]]:
        there, missing = txn.get_later("meta", b"k"), txn.get_later("meta", b"none")
        rows = list(txn.scan("cdrs"))          # a statement waited for in between
        return there(), missing(), rows
    assert store.write(run) == (b"1", None, [])


_KILLED_IMPORT = """
import os, signal, sys
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.store import BindingRequest, LmdbStore
store = LmdbStore(sys.argv[1], map_size=1 << 24)
store.sync_tenants({"demo": TenantConfig("t", (NumberRange.parse(sys.argv[2]),))})
def lines():
    for i in range(10_000):
        if i == 2_500:
            os.kill(os.getpid(), signal.SIGKILL)   # mid-batch, nothing flushed or closed
        yield i, BindingRequest("axb", f"138{i:08d}", f"139{i:08d}", f"7001{i // 4:011d}",
                                tenant="demo")
for _ in store.create_many(lines(), batch=1_000):
    pass
"""


def test_a_killed_import_keeps_its_committed_batches_whole(tmp_path: Path) -> None:
    # kill -9 in the middle of the third batch: the first two are there with every index
    # and audit entry, nothing of the third is.
    import subprocess
    import sys
    pool = f"7001{0:011d}-7001{9_999:011d}"
    done = subprocess.run([sys.executable, "-c", _KILLED_IMPORT, str(tmp_path / "s"), pool],
                          check=False, timeout=120)
    assert done.returncode == -9
    store = LmdbStore(tmp_path / "s", map_size=1 << 24)
    try:
        def count(txn: Txn) -> dict[str, int]:
            return {db: sum(1 for _ in txn.scan(db))
                    for db in ("bindings", "route", "expiry", "xuse")}
        assert store.read(count) == {"bindings": 2_000, "route": 4_000, "expiry": 2_000,
                                     "xuse": 500}
        created = [e for e in store.audit(limit=10_000) if e.action == "create"]
        assert len(created) == 2_000 and {e.seq for e in created} == set(
            range(created[0].seq, created[0].seq + 2_000))
        assert sum(u.bindings for u in store.list_pools()) == 2_000
        # and the store takes the rest of the file afterwards
        again = store.create_many((i, BindingRequest("axb", f"138{i:08d}", f"139{i:08d}",
                                                     f"7001{i // 4:011d}", tenant="demo"))
                                  for i in range(2_000, 2_100))
        assert all(o.binding is not None for o in again)
    finally:
        store.close()


# -- file modes: bindings hold real numbers (encrypted at rest or not, the files are ours) ----
def _modes(path: Path) -> dict[str, int]:
    found = {p.name: p.stat().st_mode & 0o777 for p in path.iterdir()}
    found["."] = path.stat().st_mode & 0o777
    return found


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask a service could run under: the modes must not rely on it."""
    before = os.umask(0)
    yield
    os.umask(before)


def test_a_new_store_is_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "deep" / "s.lmdb"
    LmdbStore(path).close()
    assert _modes(path) == {".": 0o700, "data.mdb": 0o600, "lock.mdb": 0o600}


def test_an_existing_store_is_made_private_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s.lmdb"
    store = LmdbStore(path)
    store.sync_tenants(TENANTS)
    made = store.create(mode="axn", tenant="demo", a=A)
    store.close()
    path.chmod(0o755)
    for name in ("data.mdb", "lock.mdb"):
        (path / name).chmod(0o644)
    (path / "notes.txt").write_text("an operator's file")     # not the store's: left alone
    (path / "notes.txt").chmod(0o644)
    reopened = LmdbStore(path)
    try:
        assert _modes(path) == {".": 0o700, "data.mdb": 0o600, "lock.mdb": 0o600,
                                "notes.txt": 0o644}
        assert reopened.get(made.id) == made
    finally:
        reopened.close()
