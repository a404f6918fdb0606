"""One store suite, three stores: every rule runs against LMDB, PostgreSQL (a real server,
tests/support/postgres.py; a fresh database per test) and the in-memory store."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipmask.clock import FakeClock
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.store import LmdbStore, MemoryStore
from sipmask.store.rules import RuleStore
from tests.support.postgres import pg_dsn, pg_key, pg_server

__all__ = ["pg_dsn", "pg_key", "pg_server"]   # fixtures for the tests of this directory

A, B, C, D = "13800000001", "13900000002", "13700000003", "13600000004"
X = "700100000000001"
DEMO_POOL = "700100000000000-700100000000009"     # ten Xs
ACME_POOL = "700200000000000-700200000000009"

TENANTS = {
    "demo": TenantConfig("demo-token", (NumberRange.parse(DEMO_POOL),)),
    "acme": TenantConfig("acme-token", (NumberRange.parse(ACME_POOL),)),
}


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
