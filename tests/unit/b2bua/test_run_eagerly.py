"""engine.run_eagerly: a call's step runs at once, and only a step that waits becomes a task
that goes on exactly as asyncio.Task would (results, exceptions, cancellation, bare yields)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from sipmask.b2bua.engine import run_eagerly

# serve runs on uvloop when it is installed; the stdlib loop is the fallback.
LOOPS = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


@LOOPS
def test_a_step_that_does_not_wait_runs_in_place_without_a_task(loop: str) -> None:
    seen: list[str] = []

    async def step() -> None:
        seen.append("ran")

    async def main() -> None:
        assert run_eagerly(step()) is None
        assert seen == ["ran"]          # before any loop pass
    run(main, loop)


@LOOPS
def test_a_step_that_waits_goes_on_with_the_result_and_exception(loop: str) -> None:
    seen: list[object] = []

    async def main() -> None:
        running = asyncio.get_running_loop()
        first, second = running.create_future(), running.create_future()

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
    run(main, loop)


@LOOPS
def test_cancelled_future_is_seen_by_the_step_and_a_cancelled_task_cancels_it(loop: str
                                                                               ) -> None:
    seen: list[str] = []

    async def main() -> None:
        running = asyncio.get_running_loop()
        future, forever = running.create_future(), running.create_future()

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
    run(main, loop)


@LOOPS
def test_a_step_waiting_on_a_loop_operation_goes_on(loop: str) -> None:
    """What the relay does on a pool miss: await one of the loop's own operations."""
    seen: list[object] = []

    async def step() -> None:
        running = asyncio.get_running_loop()
        transport, _ = await running.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        seen.append(transport.get_extra_info("sockname")[0])
        transport.close()

    async def main() -> None:
        task = run_eagerly(step())
        assert task is not None and seen == []
        await task
        assert seen == ["127.0.0.1"]
    run(main, loop)
