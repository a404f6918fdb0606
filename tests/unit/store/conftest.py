"""One store suite, two stores: every rule runs against LMDB and the in-memory store."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipmask.clock import FakeClock
from sipmask.config.schema import NumberRange, TenantConfig
from sipmask.store import LmdbStore, MemoryStore
from sipmask.store.rules import RuleStore

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


@pytest.fixture(params=["memory", "lmdb"])
def store(request: pytest.FixtureRequest, clock: FakeClock,
          tmp_path: Path) -> Iterator[RuleStore]:
    s: RuleStore
    if request.param == "memory":
        s = MemoryStore(clock, rng=random.Random(7))
    else:
        s = LmdbStore(tmp_path / "s.lmdb", clock, map_size=1 << 20, rng=random.Random(7))
    s.sync_tenants(TENANTS)
    yield s
    s.close()
