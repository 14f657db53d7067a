"""Keep a loop running: a failure is logged and the loop restarts after a growing pause,
so a store or bus outage (or a bug hit by one message) never silently stops a process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class Supervised:
    def __init__(
        self, name: str, loop: Callable[[], Awaitable[None]], *, max_pause_s: float = 5.0
    ) -> None:
        self.name = name
        self.loop = loop
        self.max_pause_s = max_pause_s
        self.failures = 0
        self.last_error: BaseException | None = None

    async def run(self) -> None:
        pause = 0.05
        while True:
            try:
                await self.loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.failures += 1
                self.last_error = e
                log.exception(
                    "%s failed (%d so far); restarting in %.2fs", self.name, self.failures, pause
                )
                await asyncio.sleep(pause)
                pause = min(self.max_pause_s, pause * 2)


async def cancel_all(tasks: Collection[asyncio.Task[Any]], *, again_s: float = 0.2) -> None:
    """Cancel `tasks` and wait until every one ended, even if this task is cancelled
    meanwhile (that cancellation is raised once they all ended). A cancellation can be
    lost inside a library (a redis-py read retried it away): such a task is cancelled
    again."""
    pending = {t for t in tasks if not t.done()}
    interrupted = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=again_s)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError


async def run_all(*loops: Coroutine[Any, Any, None]) -> None:
    """Run `loops` together until the first fails (its error is raised) or this task is
    cancelled; either way none of them is still running when this returns."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        await asyncio.gather(*tasks)
    finally:
        await cancel_all(tasks)
