"""`sipmask serve` sweeps CDRs older than cdr.retention_days (0: kept), off the event loop,
in bounded batches, and says how many went in a log line."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from sipmask.cdr.record import Cdr
from sipmask.cdr.store import CdrLog
from sipmask.config import loader
from sipmask.store import open_store
from tests.support.serve import start_serve

DAY = 86400.0
BASE = Cdr(call_id="c", tenant="demo", binding_id="b1", x="700100000000001",
           caller="13800000001", callee="13900000002", direction="a_to_b",
           invite_at=0.0, ring_at=None, answer_at=None, end_at=None, duration_s=0.0,
           release_side="callee", sip_status=486, unconnected_cause="callee_failed")


def _seed(path: Path, old: int, fresh: int) -> str:
    store = open_store(loader.loads(loader.default_text(), [f"store.path={path}"]))
    try:
        now = time.time()
        records = [replace(BASE, call_id=f"old{i}", invite_at=now - 200 * DAY + i)
                   for i in range(old)]
        records += [replace(BASE, call_id=f"new{i}", invite_at=now - DAY + i)
                    for i in range(fresh)]
        CdrLog(store).write_batch([(True, c) for c in records])
        return store.create(mode="axn", tenant="demo", a="13800000001", ttl=0).id
    finally:
        store.close()


def _left(path: Path) -> tuple[list[str], bool]:
    store = open_store(loader.loads(loader.default_text(), [f"store.path={path}"]))
    try:
        return [c.call_id for c in CdrLog(store).list()], bool(store.list())
    finally:
        store.close()


def _swept_lines(text: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "cdr.swept"]


def test_serve_sweeps_cdrs_past_retention(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    binding = _seed(work / "store.lmdb", old=2500, fresh=3)   # more than one batch
    server = start_serve(work, "--set", "store.sweep_interval_s=1", "--set",
                         "log.format=json")
    try:
        deadline = time.monotonic() + 20
        while not _swept_lines(server.stderr()) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        assert server.stop() == 0
    [line] = _swept_lines(server.stderr())
    assert line["removed"] == 2500 and line["retention_days"] == 180
    left, has_binding = _left(work / "store.lmdb")
    assert left == ["new0", "new1", "new2"] and has_binding
    assert binding


def test_retention_0_keeps_everything(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    _seed(work / "store.lmdb", old=3, fresh=1)
    server = start_serve(work, "--set", "store.sweep_interval_s=1", "--set",
                         "log.format=json", "--set", "cdr.retention_days=0")
    time.sleep(2.5)                                   # two sweep periods
    assert server.stop() == 0
    assert not _swept_lines(server.stderr())
    assert len(_left(work / "store.lmdb")[0]) == 4
