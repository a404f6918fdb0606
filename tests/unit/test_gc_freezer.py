"""serve's GcFreezer: the young generation is collected rarely, cycles are still collected,
and the interpreter's thresholds come back when it stops."""

from __future__ import annotations

import asyncio
import gc
import weakref

from sipmask.server import GC_THRESHOLDS, GcFreezer


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_young_collections_are_rare_and_cycles_still_go() -> None:
    before = gc.get_threshold()
    runs: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    async def scenario() -> tuple[int, bool]:
        freezer = GcFreezer(asyncio.get_running_loop(), interval=60)
        gc.callbacks.append(count)
        try:
            kept = [[i] for i in range(5_000)]     # far more than Python's 700
            quiet = len(runs)
            a, b = Node(), Node()
            a.other, b.other = b, a                # a garbage cycle
            gone = weakref.ref(a)
            del a, b
            for _ in range(GC_THRESHOLDS[0] // 1000 + 2):
                kept.append([[j] for j in range(1_000)])
            return quiet, gone() is None
        finally:
            gc.callbacks.remove(count)
            freezer.close()

    quiet, collected = asyncio.run(scenario())
    assert quiet == 0, "a young collection ran within 5,000 allocations"
    assert collected, "the cycle outlived GC_THRESHOLDS[0] allocations"
    assert gc.get_threshold() == before
    gc.unfreeze()
