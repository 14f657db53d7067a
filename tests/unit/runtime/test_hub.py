"""The hub wakes readers of a run; a run that ended is remembered, so a reader that checked
the store just before the end and waits just after it is answered at once."""

from __future__ import annotations

import asyncio

from headrace.runtime.hub import ENDED_KEPT, Hub


async def test_a_reader_arriving_after_the_end_is_answered_at_once() -> None:
    hub = Hub()
    hub.notify("r", 7)
    hub.ended("r")
    async with asyncio.timeout(0.5):  # the wait's own timeout is far longer: not reached
        assert await hub.wait("r", 5, 30) == 7
        await hub.wait_end("r", 30)


async def test_a_reader_is_woken_by_news_and_by_the_end() -> None:
    hub = Hub()
    news = asyncio.create_task(hub.wait("r", 0, 30))
    end = asyncio.create_task(hub.wait_end("r", 30))
    await asyncio.sleep(0)
    hub.notify("r", 3)
    hub.ended("r")
    async with asyncio.timeout(0.5):
        assert await news == 3
        await end


async def test_without_news_a_wait_times_out_with_what_it_knew() -> None:
    hub = Hub()
    assert await hub.wait("r", 4, 0.01) == 4


async def test_only_the_newest_ended_runs_are_kept() -> None:
    hub = Hub()
    for i in range(ENDED_KEPT + 1):
        hub.notify(f"r{i}", 1)
        hub.ended(f"r{i}")
    assert await hub.wait("r0", 0, 0.01) == 0  # forgotten: waited out
    assert await hub.wait(f"r{ENDED_KEPT}", 0, 30) == 1
