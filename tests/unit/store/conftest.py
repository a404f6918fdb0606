"""One store suite, three stores: every rule runs against LMDB, PostgreSQL (a real server,
tests/support/postgres.py; a fresh database per test) and the in-memory store."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipmask.clock import FakeClock
from sipmask.store import LmdbStore, MemoryStore
from sipmask.store.rules import RuleStore
from tests.support.postgres import pg_dsn, pg_key, pg_server
from tests.support.store import TENANTS

__all__ = ["pg_dsn", "pg_key", "pg_server"]   # fixtures for the tests of this directory



@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "lmdb", "postgres"])
def store(request: pytest.FixtureRequest, clock: FakeClock,
          tmp_path: Path) -> Iterator[RuleStore]:
    s: RuleStore
    if request.param == "memory":
        s = MemoryStore(clock, rng=random.Random(7))
    elif request.param == "lmdb":
        s = LmdbStore(tmp_path / "s.lmdb", clock, map_size=1 << 20, rng=random.Random(7),
                      key_file=tmp_path / "s.key")
    else:
        from sipmask.store.postgres import PostgresStore
        s = PostgresStore(request.getfixturevalue("pg_dsn"), clock, rng=random.Random(7),
                          pool_size=2, call_workers=1,
                          key_file=request.getfixturevalue("pg_key"))
    s.sync_tenants(TENANTS)
    yield s
    s.close()
