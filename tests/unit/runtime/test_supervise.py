"""Stopping loops: a loop that loses a cancellation (as a redis-py read can, by retrying
the TimeoutError its own timeout raised at the same moment) is cancelled again."""

from __future__ import annotations

import asyncio

import pytest

from headrace.runtime.supervise import cancel_all, run_all


async def swallows_first_cancel(log: list[str]) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        log.append("swallowed")  # a library that retries instead of stopping
    await asyncio.sleep(3600)


async def test_cancel_all_ends_a_task_that_lost_its_cancellation() -> None:
    log: list[str] = []
    task = asyncio.create_task(swallows_first_cancel(log))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all([task], again_s=0.01), 10)
    assert task.cancelled() and log == ["swallowed"]


async def test_run_all_leaves_nothing_running_when_cancelled() -> None:
    log: list[str] = []
    started = asyncio.Event()

    async def marks() -> None:
        started.set()
        await asyncio.sleep(3600)

    outer = asyncio.create_task(run_all(swallows_first_cancel(log), marks()))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(outer, 10)
    assert log == ["swallowed"]
    assert {t.get_coro().__name__ for t in asyncio.all_tasks()} <= {  # type: ignore[union-attr]
        "test_run_all_leaves_nothing_running_when_cancelled"
    }


async def test_run_all_raises_the_first_failure_and_stops_the_rest() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await asyncio.wait_for(run_all(fails(), asyncio.sleep(3600)), 10)
