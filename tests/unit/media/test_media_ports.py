"""PortAllocator: even RTP ports with RTCP = RTP + 1 (RFC 3550 §11), a queue that sends
freed pairs to the back, typed exhaustion, skipping pairs that failed to bind. Also the
sans-IO contract for the pure media modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import sipmask
from sipmask.config.schema import PortRange
from sipmask.errors import MediaError, PortsExhausted
from sipmask.media.ports import PortAllocator, PortPair

ROOT = Path(sipmask.__file__).resolve().parent.parent
PURE_MODULES = ("sipmask.media.ports", "sipmask.media.bencode")
FORBIDDEN = {"asyncio", "socket", "time", "lmdb", "uvloop"}


def test_pairs_are_even_rtp_with_rtcp_next() -> None:
    alloc = PortAllocator(PortRange(30001, 30010))
    pairs = [alloc.allocate() for _ in range(alloc.capacity)]
    assert [p.rtp for p in pairs] == [30002, 30004, 30006, 30008]
    assert all(p.rtp % 2 == 0 and p.rtcp == p.rtp + 1 for p in pairs)
    assert max(p.rtcp for p in pairs) <= 30010


def test_last_pair_must_fit_whole() -> None:
    # 30000-30004: pairs 30000/1 and 30002/3; 30004 has no room for its RTCP port.
    alloc = PortAllocator(PortRange(30000, 30004))
    assert alloc.capacity == 2
    assert PortAllocator(PortRange(30000, 30005)).capacity == 3


def test_exhaustion_is_typed_and_names_the_range() -> None:
    alloc = PortAllocator(PortRange(30000, 30003))
    alloc.allocate()
    alloc.allocate()
    with pytest.raises(PortsExhausted, match="30000-30003") as caught:
        alloc.allocate()
    assert isinstance(caught.value, MediaError)
    assert alloc.available == 0 and alloc.in_use == 2


def test_a_freed_pair_goes_to_the_back_of_the_queue() -> None:
    alloc = PortAllocator(PortRange(30000, 30009))  # 5 pairs
    first = alloc.allocate()
    alloc.free(first)
    # Every other pair comes out before the just-freed one is reused.
    following = [alloc.allocate() for _ in range(4)]
    assert first not in following
    assert alloc.allocate() == first


def test_allocation_cycles_through_the_whole_range() -> None:
    alloc = PortAllocator(PortRange(30000, 30099))
    seen: set[int] = set()
    for _ in range(alloc.capacity * 3):
        pair = alloc.allocate()
        seen.add(pair.rtp)
        alloc.free(pair)
    assert len(seen) == alloc.capacity == 50


def test_free_of_a_pair_not_allocated_is_refused() -> None:
    alloc = PortAllocator(PortRange(30000, 30009))
    with pytest.raises(ValueError, match="not allocated"):
        alloc.free(PortPair(30000))
    pair = alloc.allocate()
    alloc.free(pair)
    with pytest.raises(ValueError):
        alloc.free(pair)


def test_skip_sends_a_failed_pair_back_and_counts_it() -> None:
    alloc = PortAllocator(PortRange(30000, 30005))  # 3 pairs
    busy = alloc.allocate()
    alloc.skip(busy)
    assert alloc.skipped == 1
    assert alloc.available == 3 and alloc.in_use == 0
    assert [alloc.allocate().rtp for _ in range(3)] == [30002, 30004, 30000]


def test_counts_track_allocate_and_free() -> None:
    alloc = PortAllocator(PortRange(40000, 40019))
    pairs = [alloc.allocate() for _ in range(7)]
    assert (alloc.in_use, alloc.available) == (7, 3)
    for pair in pairs[:5]:
        alloc.free(pair)
    assert (alloc.in_use, alloc.available) == (2, 8)


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_media_modules_import_no_io(module: str) -> None:
    source = (ROOT / (module.replace(".", "/") + ".py")).read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


def test_pure_media_modules_load_no_io_module_indirectly() -> None:
    code = ("import importlib, json, sys\n"
            "before = {m.split('.')[0] for m in sys.modules}\n"
            f"for name in {PURE_MODULES!r}: importlib.import_module(name)\n"
            "after = {m.split('.')[0] for m in sys.modules}\n"
            "print(json.dumps(sorted(after - before)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, check=True, timeout=60)
    added = set(json.loads(done.stdout))
    assert "sipmask" in added
    assert not added & FORBIDDEN
