"""CDR group commit (cdr/group.py) on a real LMDB store: one transaction per loop pass, every
waiter answered, one bad record fails only its own caller."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sipmask.cdr.group import CdrGroupCommit
from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrLog, MemoryCdrLog
from sipmask.store import LmdbStore

BASE = Cdr(call_id="c", tenant="demo", binding_id="b1", x="700100000000001",
           caller="13800000001", callee="13900000002", direction="a_to_b",
           invite_at=1800000000.0, ring_at=None, answer_at=1800000000.5, end_at=None,
           duration_s=0.0, release_side=None, sip_status=200, unconnected_cause="none")


def test_records_queued_in_one_pass_share_one_commit(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    group = CdrGroupCommit(CdrLog(store))

    async def main() -> None:
        ups = [replace(BASE, call_id=f"c{i}") for i in range(5)]
        await asyncio.gather(*(group.call_up(c) for c in ups))
        assert group.commits == 1
        ended = [replace(c, end_at=1800000002.0, duration_s=1.5, release_side="caller")
                 for c in ups]
        await asyncio.gather(*(group.write(c) for c in ended))
        assert group.commits == 2

    asyncio.run(main())
    group.close()
    store.close()
    reopened = CdrLog(LmdbStore(tmp_path / "s"))
    assert sorted(c.call_id for c in reopened.list()) == [f"c{i}" for i in range(5)]
    assert reopened.calls_up() == []    # each final record replaced its journal entry
    reopened.store.close()


def test_a_record_that_cannot_be_written_fails_only_its_caller(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    group = CdrGroupCommit(CdrLog(store))
    bad: Any = object()    # not JSON: its encoding raises inside the batch

    async def main() -> list[BaseException | None]:
        results = await asyncio.gather(
            group.write(replace(BASE, call_id="good1", end_at=1800000001.0)),
            group.write(replace(BASE, call_id="bad", end_at=bad)),
            group.write(replace(BASE, call_id="good2", end_at=1800000001.0)),
            return_exceptions=True)
        return list(results)

    results = asyncio.run(main())
    group.close()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], TypeError)
    assert sorted(c.call_id for c in CdrLog(store).list()) == ["good1", "good2"]
    store.close()


def test_a_sink_that_does_not_block_commits_in_the_loop() -> None:
    sink = MemoryCdrLog()
    group = CdrGroupCommit(sink)

    async def main() -> None:
        await group.call_up(BASE)
        assert sink.up == {"c": BASE}
        await group.write(replace(BASE, end_at=1800000001.0))
        assert [c.call_id for c in sink.records] == ["c"] and sink.up == {}

    asyncio.run(main())
    assert group._executor is None     # no writer thread was started for it


@pytest.mark.parametrize("count", [1, 50])
def test_every_waiter_is_answered(tmp_path: Path, count: int) -> None:
    store = LmdbStore(tmp_path / "s")
    group = CdrGroupCommit(CdrLog(store))

    async def main() -> None:
        for i in range(count):
            await group.write(replace(BASE, call_id=f"seq{i}", end_at=1800000001.0))

    asyncio.run(asyncio.wait_for(main(), 20))
    group.close()
    assert CdrLog(store).count() == count
    store.close()
