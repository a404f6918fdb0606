"""store.key_file (issue 14 §2): made 0600 when a store starts without one, refused with a
message naming the key when it is too open, the wrong size or not the store's key; never
its bytes in a message. The index is HMAC-SHA256 under a derived key."""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

import pytest

from sipmask.clock import FakeClock
from sipmask.errors import StoreError
from sipmask.store import LmdbStore
from sipmask.store.crypto import (
    _INDEX_LABEL,
    KEY_BYTES,
    KeyFileError,
    KeyMismatch,
    Keyring,
    _derive,
    create_key_file,
)
from sipmask.store.lmdb import default_key_file
from tests.support.store import TENANTS, A, B, X


def write_key(path: Path, data: bytes, mode: int = 0o600) -> bytes:
    path.write_bytes(data)
    path.chmod(mode)
    return data


def test_a_new_store_makes_its_key_file_private_and_32_bytes(tmp_path: Path) -> None:
    before = os.umask(0)     # the most open umask a service could have
    try:
        store = LmdbStore(tmp_path / "s.lmdb", key_file=tmp_path / "keys" / "k")
        store.close()
    finally:
        os.umask(before)
    key = tmp_path / "keys" / "k"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == KEY_BYTES
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700



def test_without_a_key_file_named_the_configs_default_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the server uses from the same working directory: a script opening its store
    # by path alone gets the same key.
    monkeypatch.chdir(tmp_path)
    LmdbStore(tmp_path / "t.lmdb").close()
    assert default_key_file() == Path("var/sipmask.key")
    assert (tmp_path / "var" / "sipmask.key").stat().st_size == KEY_BYTES
    LmdbStore(tmp_path / "t.lmdb", key_file=tmp_path / "var" / "sipmask.key").close()


def test_an_existing_key_file_is_used_not_replaced(tmp_path: Path) -> None:
    data = write_key(tmp_path / "k", os.urandom(KEY_BYTES), 0o400)   # narrower is fine
    store = LmdbStore(tmp_path / "s", key_file=tmp_path / "k")
    assert store.keys.fingerprint == Keyring(data).fingerprint
    store.close()
    assert (tmp_path / "k").read_bytes() == data


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    data = write_key(tmp_path / "k", os.urandom(KEY_BYTES), mode)
    with pytest.raises(KeyFileError) as exc:
        LmdbStore(tmp_path / "s", key_file=tmp_path / "k")
    text = str(exc.value)
    assert text.startswith("store.key_file:") and f"{mode:04o}" in text and "chmod 600" in text
    assert data.hex() not in text and repr(data) not in text


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    write_key(tmp_path / "k", b"k" * size)
    with pytest.raises(KeyFileError, match=rf"store.key_file: .* holds {size} bytes"):
        LmdbStore(tmp_path / "s", key_file=tmp_path / "k")


def test_another_key_is_refused_and_a_missing_one_not_remade(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s", FakeClock(), key_file=tmp_path / "k")
    store.sync_tenants(TENANTS)
    store.create(mode="axb", tenant="demo", a=A, b=B, x=X)
    sealed_with = store.keys.fingerprint
    store.close()
    other = write_key(tmp_path / "other", os.urandom(KEY_BYTES))
    with pytest.raises(KeyMismatch) as exc:
        LmdbStore(tmp_path / "s", key_file=tmp_path / "other")
    text = str(exc.value)
    assert text.startswith("store.key_file does not match this store:")
    assert sealed_with in text and Keyring(other).fingerprint in text
    assert other.hex() not in text
    # A sealed store whose key file went missing: refused, and no new key is made (a new
    # one could never open the store; the operator must restore the old one).
    (tmp_path / "k").unlink()
    with pytest.raises(KeyFileError, match=f"does not exist.*sealed with key {sealed_with}"):
        LmdbStore(tmp_path / "s", key_file=tmp_path / "k")
    assert not (tmp_path / "k").exists()


def test_a_refused_key_leaves_the_store_closed_and_openable(tmp_path: Path) -> None:
    LmdbStore(tmp_path / "s", key_file=tmp_path / "k").close()
    write_key(tmp_path / "bad", b"x" * 3)
    for _ in range(3):   # each failed open releases the environment it opened
        with pytest.raises(StoreError):
            LmdbStore(tmp_path / "s", key_file=tmp_path / "bad")
    LmdbStore(tmp_path / "s", key_file=tmp_path / "k").close()


def test_racing_creators_end_with_one_key(tmp_path: Path) -> None:
    # Both "processes" find no file; the second links after the first: it reads the first's.
    first = create_key_file(tmp_path / "k")
    second = create_key_file(tmp_path / "k")
    assert first == second == (tmp_path / "k").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["k"]     # no temporary file left


def test_the_index_is_hmac_sha256_under_a_derived_key_and_keyed() -> None:
    master = os.urandom(KEY_BYTES)
    keys = Keyring(master)
    want = hmac.digest(_derive(master, _INDEX_LABEL), f"{X}\x1f{A}".encode(), "sha256")
    assert keys.index(X, A) == want[:16]
    assert _derive(master, _INDEX_LABEL) != master
    # Another key, another X: unrelated hashes (no linking a number across Xs).
    assert Keyring(os.urandom(KEY_BYTES)).index(X, A) != keys.index(X, A)
    assert keys.index("700100000000002", A) != keys.index(X, A)


def test_a_sealed_value_does_not_open_elsewhere() -> None:
    keys = Keyring.generate()
    sealed = keys.seal(3, b"clear header", b"13800000001")
    assert keys.open(sealed, 4 + len(b"clear header")) == b"13800000001"
    assert b"13800000001" not in sealed
    moved = sealed[:4] + b"other header" + sealed[4 + 12:]    # the ciphertext, re-labelled
    with pytest.raises(KeyMismatch):
        keys.open(moved, 4 + 12)
    with pytest.raises(KeyMismatch):
        Keyring.generate().open(sealed, 4 + 12)
    assert keys.seal(3, b"", b"x") != keys.seal(3, b"", b"x")    # a fresh nonce each time
