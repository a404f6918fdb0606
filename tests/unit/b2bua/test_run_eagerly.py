"""engine.run_eagerly: a call's step runs at once, and only a step that waits becomes a task
that goes on exactly as asyncio.Task would (results, exceptions, cancellation, bare yields)."""

from __future__ import annotations

import asyncio

import pytest

from sipmask.b2bua.engine import run_eagerly


def test_a_step_that_does_not_wait_runs_in_place_without_a_task() -> None:
    seen: list[str] = []

    async def step() -> None:
        seen.append("ran")

    async def main() -> None:
        assert run_eagerly(step()) is None
        assert seen == ["ran"]          # before any loop pass
    asyncio.run(main())


def test_a_step_that_waits_goes_on_with_the_result_and_exception() -> None:
    seen: list[object] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        first, second = loop.create_future(), loop.create_future()

        async def step() -> None:
            seen.append("start")
            seen.append(await first)
            try:
                await second
            except KeyError as exc:
                seen.append(f"caught {exc}")
            await asyncio.sleep(0)      # a bare yield
            seen.append("end")

        task = run_eagerly(step())
        assert task is not None and seen == ["start"]
        first.set_result(42)
        second.set_exception(KeyError("k"))
        await task
        assert seen == ["start", 42, "caught 'k'", "end"]
    asyncio.run(main())


def test_cancelled_future_is_seen_by_the_step_and_a_cancelled_task_cancels_it() -> None:
    seen: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        future, forever = loop.create_future(), loop.create_future()

        async def waits_on(f: asyncio.Future[None], name: str) -> None:
            try:
                await f
            except asyncio.CancelledError:
                seen.append(name)
                raise

        task = run_eagerly(waits_on(future, "future"))
        assert task is not None
        future.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        other = run_eagerly(waits_on(forever, "task"))
        assert other is not None
        await asyncio.sleep(0)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        assert seen == ["future", "task"]
    asyncio.run(main())
