"""The process settings `sipmask serve` makes: the young generation is collected rarely and
cycles are still collected (GcFreezer); the open-files limit is lifted."""

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
            kept: list[object] = [[i] for i in range(5_000)]   # far more than 700
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


def test_serve_lifts_the_open_files_limit_to_the_hard_one() -> None:
    import resource
    import subprocess
    import sys
    # A child with a low soft limit, as a Debian service gets by default.
    code = ("import resource; from sipmask.server import raise_open_files_limit; "
            "print(*raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[1])")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = min(256, hard)

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         preexec_fn=lower, check=True).stdout.split()
    before, after, child_hard = map(int, out)
    assert before == low and child_hard == hard
    assert after == (hard if hard != resource.RLIM_INFINITY else 1_048_576)
