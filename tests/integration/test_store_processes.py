"""The store shared by processes: a reader sees CLI writes on its next lookup; an
acknowledged write survives kill -9; concurrent writers cannot both take one pair.
Each test runs on LMDB and on PostgreSQL (a real server: tests/support/postgres.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import pg_dsn, pg_key, pg_server

__all__ = ["pg_dsn", "pg_key", "pg_server"]   # fixtures

A, B, C = "13800000001", "13900000002", "13700000003"
X = "700100000000001"

READER = """
import sys, time
from sipmask.config import loader
from sipmask.store import open_store
store = open_store(loader.load(None, sys.argv[4:]))
print("ready", flush=True)
state, seen, deadline = "start", False, time.monotonic() + 60
while time.monotonic() < deadline:
    found = store.route(sys.argv[2], sys.argv[3], time.time())
    now = found.id if found else None
    if now != state:
        state = now
        print(f"route {state}", flush=True)
        if state is None and seen:
            break
        seen = seen or state is not None
"""

WRITER = """
import sys
from sipmask.config import loader
from sipmask.store import open_store
store = open_store(loader.load(None, sys.argv[1:]))
for i in range(100_000):
    b = store.create(mode="axn", tenant="demo", a=f"138{i:08d}", actor="api")
    print(b.id, flush=True)   # printed only after the commit returned
"""


@pytest.fixture(params=["lmdb", "postgres"])
def store_set(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The config overrides (key=value) that point sipmask at this test's store."""
    if request.param == "lmdb":
        return [f"store.path={tmp_path / 's'}"]
    return ["store.backend=postgres", f"store.dsn={request.getfixturevalue('pg_dsn')}",
            f"store.key_file={request.getfixturevalue('pg_key')}"]


def _sets(store_set: list[str]) -> list[str]:
    return [arg for item in store_set for arg in ("--set", item)]


def cli(tmp_path: Path, store_set: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmask", *args, *_sets(store_set)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)


def test_a_reader_process_sees_cli_writes_on_its_next_lookup(tmp_path: Path,
                                                            store_set: list[str]) -> None:
    reader = subprocess.Popen([sys.executable, "-c", READER, "-", X, A, *store_set],
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "ready"
        assert reader.stdout.readline().strip() == "route None"
        made = cli(tmp_path, store_set, "bind", "axb", "--a", A, "--b", B, "--x", X)
        assert made.returncode == 0, made.stderr
        binding_id = json.loads(made.stdout)["id"]
        assert reader.stdout.readline().strip() == f"route {binding_id}"
        assert cli(tmp_path, store_set, "unbind", binding_id).returncode == 0
        assert reader.stdout.readline().strip() == "route None"
        assert reader.wait(timeout=30) == 0
    finally:
        reader.kill()
        reader.wait()
        if reader.stdout is not None:
            reader.stdout.close()


def test_an_acknowledged_binding_survives_kill_9(tmp_path: Path, store_set: list[str]) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, *store_set],
                              stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    assert writer.stdout is not None
    acknowledged = [writer.stdout.readline().strip() for _ in range(50)]
    os.kill(writer.pid, signal.SIGKILL)   # mid-stream: it is writing more as we kill it
    writer.wait()
    acknowledged += [line.strip() for line in writer.stdout if line.strip()]
    writer.stdout.close()
    shown = [cli(tmp_path, store_set, "show", acknowledged[i]) for i in (0, -1)]
    assert all(r.returncode == 0 for r in shown), [r.stderr for r in shown]
    listed = {json.loads(line)["id"] for line in
              cli(tmp_path, store_set, "list", "--limit", "1000000").stdout.splitlines()}
    assert set(acknowledged) <= listed
    # the store still writes
    assert cli(tmp_path, store_set, "bind", "axn", "--a", C).returncode == 0


def test_concurrent_writers_cannot_both_take_a_pair(tmp_path: Path,
                                                    store_set: list[str]) -> None:
    assert cli(tmp_path, store_set, "list").returncode == 0   # create the store first
    procs = [subprocess.Popen([sys.executable, "-m", "sipmask", "bind", "axb", "--a", A,
                               "--b", b, "--x", X, *_sets(store_set)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path) for b in (B, C, B, C)]
    results = [(p.wait(timeout=60), p.communicate()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 1, 1, 1]
    refusals = [err for rc, (_, err) in results if rc == 1]
    assert all(err == "sipmask: a: already bound on this X\n" for err in refusals)
    assert len(cli(tmp_path, store_set, "list", "--x", X).stdout.splitlines()) == 1
