"""store/codec.py owns every byte layout: each record round-trips through it, and what the
bulk import writes (create_many's own path, create_plain) is what codec's encoders write for
the same binding and audit entry: the same clear header byte for byte, and the same
plaintext under the seal (the nonce is random, so sealed bytes differ every time)."""

from __future__ import annotations

import ast
import random
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from sipmask.clock import FakeClock
from sipmask.store import LmdbStore, codec
from sipmask.store.base import Binding, BindingRequest
from sipmask.store.crypto import HEAD, Keyring
from sipmask.store.rules import RuleStore, Txn
from tests.support.store import TENANTS, A, B, C, D, X

KEYS = Keyring.generate()

_TEXT = st.text(st.characters(exclude_characters=codec.SEP, exclude_categories=["Cs"]),
                max_size=20)
_NUMBER = st.text("0123456789", min_size=1, max_size=15)
_TIME = st.floats(0, 4e9, allow_nan=False)

bindings = st.builds(
    Binding, id=st.text("0123456789abcdef", min_size=1, max_size=24),
    mode=st.sampled_from(["axb", "axn"]), tenant=_TEXT, x=_NUMBER, a=_NUMBER,
    b=st.none() | _NUMBER, created_at=_TIME, expires_at=st.none() | _TIME,
    direction=st.sampled_from(["both", "a_to_b", "b_to_a"]),
    max_duration_s=st.none() | st.integers(1, 86400),
    max_concurrent=st.none() | st.integers(1, 100),
    blacklist=st.lists(_NUMBER, max_size=3).map(tuple))


@given(bindings)
def test_every_binding_round_trips(b: Binding) -> None:
    decoded = codec.decode_binding(codec.encode_binding(b, KEYS), KEYS)
    assert decoded == b and type(decoded) is Binding
    assert codec.decode_plain_binding(codec.encode_plain_binding(b)) == b


@given(bindings)
def test_a_binding_without_rules_is_made_as_decode_makes_it(b: Binding) -> None:
    made = codec.new_binding(b.id, b.mode, b.tenant, b.x, b.a, b.b, b.created_at,
                             b.expires_at)
    plain = Binding(b.id, b.mode, b.tenant, b.x, b.a, b.b, b.created_at, b.expires_at)
    assert made == plain and type(made) is Binding
    assert codec.decode_binding(codec.encode_binding(made, KEYS), KEYS) == made


@given(st.integers(0, 2**40), _TIME, _TEXT, st.sampled_from(["cli", "import"]), _TEXT,
       _TEXT, st.dictionaries(_TEXT, st.none() | _TEXT | st.integers(), max_size=3))
def test_every_audit_entry_round_trips(seq: int, at: float, tenant: str, actor: str,
                                       action: str, subject: str,
                                       data: dict[str, object]) -> None:
    entry = codec.decode_audit(codec.encode_audit(seq, at, tenant, actor, action, subject,
                                                  data, KEYS), KEYS)
    assert (entry.seq, entry.at, entry.tenant, entry.actor, entry.action, entry.subject,
            dict(entry.data)) == (seq, at, tenant, actor, action, subject, data)


def _clear(raw: bytes) -> bytes:
    """A sealed value's tag, key generation and clear header (crypto.Keyring.seal)."""
    return raw[:HEAD.size + HEAD.unpack_from(raw)[2]]


def _records(store: RuleStore) -> tuple[list[bytes], list[bytes]]:
    def read(txn: Txn) -> tuple[list[bytes], list[bytes]]:
        return ([raw for _, raw in txn.scan("bindings")], [raw for _, raw in txn.scan("audit")])
    return store.read(read)


def test_the_bulk_import_writes_codecs_layouts(tmp_path: Path) -> None:
    """create_many writes plain lines by its own path (create_plain) and the rest through
    create's: every record either way is what codec encodes for it, byte for byte."""
    clock = FakeClock()
    store = LmdbStore(tmp_path / "s.lmdb", clock, map_size=1 << 22, rng=random.Random(7))
    try:
        store.sync_tenants(TENANTS)
        clock.advance(1.25)
        lines = [BindingRequest("axb", A, B, X, tenant="demo"),              # plain
                 BindingRequest("axn", C, None, None, ttl=0, tenant="demo"),  # plain, allocated
                 BindingRequest("axb", "+86 " + D, A, None, tenant="demo"),   # normalised: create
                 BindingRequest("axb", C, D, None, tenant="demo", max_concurrent=2)]
        made = [outcome.binding for outcome in store.create_many(enumerate(lines, 1))]
        assert all(b is not None for b in made)
        raw_bindings, raw_audit = _records(store)
        keys = store.keys
        assert sorted(map(_clear, raw_bindings)) == sorted(
            _clear(codec.encode_binding(b, keys)) for b in made if b)
        assert sorted(codec.decode_binding(raw, keys) for raw in raw_bindings) == sorted(
            b for b in made if b)
        created = [codec.decode_audit(raw, keys) for raw in raw_audit
                   if b"\x1fcreate\x1f" in raw]
        assert len(created) == len(lines)
        for raw in raw_audit:
            e = codec.decode_audit(raw, keys)
            again = codec.encode_audit(e.seq, e.at, e.tenant, e.actor, e.action, e.subject,
                                       e.data, keys)
            assert _clear(raw) == _clear(again) and codec.decode_audit(again, keys) == e
        assert {e.subject: e.data for e in created} == {
            b.id: {"mode": b.mode, "x": b.x, "a": b.a, "b": b.b, "expires_at": b.expires_at}
            for b in made if b}
    finally:
        store.close()


def test_no_record_is_built_behind_its_constructors_back() -> None:
    """DESIGN.md rule 14: no `cls.__new__` / `object.__new__` / `tuple.__new__` in store/."""
    package = Path(codec.__file__).parent
    for path in sorted(package.glob("*.py")):
        calls = [node for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.Attribute) and node.attr == "__new__"]
        assert calls == [], path.name
