"""Keep a loop running: a failure is logged and the loop restarts after a growing pause,
so a store or bus outage (or a bug hit by one message) never silently stops a process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

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
