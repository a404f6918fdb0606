"""Recorded calls at rest (store/recordings.py): who is recorded, where the file goes, the
one reader, the retention sweep."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sipmask.config.schema import RecordingConfig, TenantConfig
from sipmask.media.wav import wav_header
from sipmask.store import recordings
from sipmask.store.base import Binding
from sipmask.store.crypto import Keyring

CALL = "9f3b2c1d0e4a5b6c7d8e9f0a1b2c3d4e@127.0.0.1"
NAME = "9f3b2c1d0e4a5b6c7d8e9f0a1b2c3d4e.wav"


def test_a_binding_or_its_tenant_asks_for_recording() -> None:
    plain = Binding("i", "axb", "demo", "700100000000001", "13800000001", "13900000002",
                    0.0, None)
    tenants = {"demo": TenantConfig("t"), "loud": TenantConfig("u", record=True)}
    assert not recordings.should_record(plain, tenants)
    assert recordings.should_record(plain._replace(record=True), tenants)
    assert recordings.should_record(plain._replace(tenant="loud"), tenants)
    assert not recordings.should_record(plain._replace(tenant="gone"), tenants)


@pytest.mark.parametrize("bad", ["", "../x", ".hidden@h", "a/b", "x" * 300])
def test_a_name_is_made_of_the_call_id_only(bad: str) -> None:
    assert recordings.recording_name(CALL) == NAME
    with pytest.raises(ValueError):
        recordings.recording_name(bad)


def test_the_sink_writes_where_the_reader_reads(tmp_path: Path) -> None:
    config = RecordingConfig(dir=tmp_path / "rec")
    keys = Keyring.generate()
    sink = recordings.open_sink(config, "demo", CALL, keys)
    sink.write(b"LRLR" * 4)
    sink.close()
    path = tmp_path / "rec" / "demo" / NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "rec" / "demo").stat().st_mode & 0o777 == 0o700
    with pytest.raises(FileExistsError):          # never over another call's file
        recordings.open_sink(config, "demo", CALL, keys)
    found = recordings.open_recording(config, CALL, "demo", keys=keys)
    try:
        assert (found.tenant, found.name, found.size) == ("demo", NAME, 44 + 16)
        assert found.stream.read() == wav_header(2, 16) + b"LRLR" * 4
    finally:
        found.close()
    with pytest.raises(recordings.RecordingNotFound):
        recordings.open_recording(config, CALL, "acme", keys=keys)
    anyone = recordings.open_recording(config, CALL.partition("@")[0], keys=keys)
    anyone.close()
    assert anyone.tenant == "demo"


def test_a_link_in_a_tenant_directory_is_not_followed(tmp_path: Path) -> None:
    config = RecordingConfig(dir=tmp_path / "rec")
    (tmp_path / "rec" / "demo").mkdir(parents=True)
    secret = tmp_path / "secret.wav"
    secret.write_bytes(b"not yours")
    os.symlink(secret, tmp_path / "rec" / "demo" / "ab.wav")
    with pytest.raises(recordings.RecordingNotFound):
        recordings.open_recording(config, "ab", "demo", keys=Keyring.generate())


def test_the_sweep_deletes_what_is_past_retention(tmp_path: Path) -> None:
    config = RecordingConfig(dir=tmp_path / "rec", retention_days=30)
    folder = tmp_path / "rec" / "demo"
    folder.mkdir(parents=True)
    now = 2_000_000_000.0
    for name, age_days in (("old1.wav", 31), ("old2.wav", 40), ("new.wav", 29),
                           ("notes.txt", 400)):
        path = folder / name
        path.write_bytes(b"x")
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    assert recordings.sweep(config, now, limit=1) == 1
    assert recordings.sweep(config, now) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["new.wav", "notes.txt"]
    assert recordings.sweep(RecordingConfig(dir=tmp_path / "rec", retention_days=0),
                            now + 1e9) == 0
    assert recordings.sweep(RecordingConfig(dir=tmp_path / "none"), now) == 0
